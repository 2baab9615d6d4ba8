"""Fine-tuning: LoRA, AdaLoRA and full training in one resumable, multi-process loop."""

from whispertune.train.config import TrainOptions
from whispertune.train.loop import TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]
