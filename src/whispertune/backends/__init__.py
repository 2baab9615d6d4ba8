"""Inference backends behind one interface: transformers and CTranslate2."""

from whispertune.backends.base import DecodeOptions, Transcriber, Transcript, create_transcriber

__all__ = ["DecodeOptions", "Transcriber", "Transcript", "create_transcriber"]
