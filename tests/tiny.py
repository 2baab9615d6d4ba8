"""Tiny Whisper models built from a config in the test itself: real architecture, real
tokenizer (the built-in base's, with timestamp tokens), random weights. For mechanics, not
quality."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from whispertune.models.builtin import builtin_tokenizer_file
from whispertune.models.ct2_import import build_generation_config, build_tokenizer

VOCAB = 51865


def tiny_config(**overrides) -> WhisperConfig:
    kw = dict(
        vocab_size=VOCAB, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
        decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=448,
        pad_token_id=50257, bos_token_id=50257, eos_token_id=50257,
        decoder_start_token_id=50258,
    )
    kw.update(overrides)
    return WhisperConfig(**kw)


def save_tiny_whisper(path: Path, seed: int = 0, **overrides) -> Path:
    """A complete transformers Whisper directory (model, tokenizer, features, generation)."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = WhisperForConditionalGeneration(config)
    tokenizer = build_tokenizer(builtin_tokenizer_file("base"), VOCAB)
    ct2_config = json.loads((builtin_tokenizer_file("base").parent / "config.json").read_text())
    model.generation_config = build_generation_config(tokenizer, ct2_config, config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(path)
    return path
