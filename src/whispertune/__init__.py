"""whispertune: OpenAI Whisper from a checkpoint to a fine-tuned, evaluated, deployed recogniser."""

__version__ = "0.1.0"
