"""Exports to the runtimes users deploy with: CTranslate2 (faster-whisper), GGML (whisper.cpp)."""
