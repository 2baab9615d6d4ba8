"""Fine-tuning: LoRA, AdaLoRA and full training in one resumable, multi-process loop."""

from typing import TYPE_CHECKING

from whispertune.train.config import TrainOptions

if TYPE_CHECKING:
    from whispertune.train.loop import TrainResult, train

__all__ = ["TrainOptions", "TrainResult", "train"]


def __getattr__(name: str):
    # The loop imports torch (1-2 s); ``whispertune train --help`` only needs TrainOptions.
    if name in ("TrainResult", "train"):
        from whispertune.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
