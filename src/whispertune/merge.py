"""Merge a LoRA/AdaLoRA adapter into its base: a plain transformers checkpoint that every tool
loads (whispertune, transformers, CTranslate2's and whisper.cpp's converters)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from whispertune.errors import UserError
from whispertune.models.sources import resolve

logger = logging.getLogger(__name__)


def merge_adapter(adapter: str | Path, output: str | Path, *, base: str | None = None,
                  force: bool = False) -> Path:
    """Write base + adapter merged to ``output`` (weights, tokenizer with timestamp tokens,
    preprocessor_config.json, generation_config.json). Written to a temporary folder first,
    so a failed merge never leaves a half checkpoint under ``output``."""
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whispertune.models.ct2_import import write_vocab_merges
    from whispertune.models.loading import load_processor
    from whispertune.output_style import copy_style

    source = resolve(adapter, base=base)
    if source.adapter_dir is None:
        raise UserError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise UserError(f"{output}: already exists and is not empty; pass --force to replace it")
    base_model = WhisperForConditionalGeneration.from_pretrained(source.hf_dir(),
                                                                 dtype=torch.float32)
    merged = PeftModel.from_pretrained(base_model, source.adapter_dir).merge_and_unload()
    processor = load_processor(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".merge-") as tmp:
        staged = Path(tmp) / "model"
        merged.save_pretrained(staged)
        processor.tokenizer.save_pretrained(staged)
        processor.feature_extractor.save_pretrained(staged)
        tokenizer_json = source.hf_dir() / "tokenizer.json"
        if (source.hf_dir() / "vocab.json").is_file():
            shutil.copy2(source.hf_dir() / "vocab.json", staged / "vocab.json")
            shutil.copy2(source.hf_dir() / "merges.txt", staged / "merges.txt")
        elif tokenizer_json.is_file():
            write_vocab_merges(tokenizer_json, staged)
        copy_style(source.adapter_dir, staged)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staged, output)
    logger.info("merged %s into %s", source.describe(), output)
    return output
