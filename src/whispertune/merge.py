"""Merge a LoRA/AdaLoRA adapter into its base: a plain transformers checkpoint that every tool
loads (whispertune, transformers, CTranslate2's and whisper.cpp's converters)."""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from whispertune.errors import UserError
from whispertune.models.sources import resolve
from whispertune.progress import ProgressCallback, Reporter, check_cancel
from whispertune.staging import move_into_place, refuse_existing, staging_dir

logger = logging.getLogger(__name__)


@dataclass
class MergeOptions:
    """Options of ``whispertune merge``."""

    adapter: str = field(metadata={"help": "adapter directory (e.g. runs/x/best)"})
    output: Path = field(metadata={"help": "directory to write"})
    base_model: str | None = field(
        default=None,
        metadata={"help": "base model, if the adapter's recorded base cannot be resolved here"},
    )
    force: bool = field(default=False, metadata={"help": "replace an existing output directory"})


def merge_adapter(
    adapter: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Write base + adapter merged to ``output`` (weights, tokenizer with timestamp tokens,
    preprocessor_config.json, generation_config.json).

    Written to a temporary folder beside ``output`` first, so a failed or cancelled merge never
    leaves a half checkpoint under ``output`` (an old one is moved aside, then deleted, only
    once the new one is complete). Events: "merge" (steps: base loaded, adapter applied,
    merged) then "write" (steps: weights, tokenizer files). ``cancel`` is checked between
    steps: :class:`whispertune.progress.Cancelled` with ``state="removed"``, nothing written.
    """
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    from whispertune.models.ct2_import import write_vocab_merges
    from whispertune.models.loading import load_processor
    from whispertune.output_style import copy_style

    source = resolve(adapter, base=base)
    if source.adapter_dir is None:
        raise UserError(f"{adapter}: not an adapter directory (no adapter_config.json)")
    output = Path(output)
    refuse_existing(output, force)
    merge = Reporter(progress, "merge", total=3, unit="step")
    merge(0, message=f"merging {source.describe()}")
    base_model = WhisperForConditionalGeneration.from_pretrained(
        source.hf_dir(), dtype=torch.float32
    )
    merge(1)
    check_cancel(cancel, "merge")
    peft_model = PeftModel.from_pretrained(base_model, source.adapter_dir)
    merge(2)
    check_cancel(cancel, "merge")
    merged = peft_model.merge_and_unload()
    processor = load_processor(source)
    merge(3)
    check_cancel(cancel, "merge")
    write = Reporter(progress, "write", total=2, unit="step")
    with staging_dir(output, ".merge-") as tmp:
        staged = tmp / "model"
        merged.save_pretrained(staged)
        write(1)
        check_cancel(cancel, "merge")
        processor.tokenizer.save_pretrained(staged)
        processor.feature_extractor.save_pretrained(staged)
        tokenizer_json = source.hf_dir() / "tokenizer.json"
        if (source.hf_dir() / "vocab.json").is_file():
            shutil.copy2(source.hf_dir() / "vocab.json", staged / "vocab.json")
            shutil.copy2(source.hf_dir() / "merges.txt", staged / "merges.txt")
        elif tokenizer_json.is_file():
            write_vocab_merges(tokenizer_json, staged)
        copy_style(source.adapter_dir, staged)
        check_cancel(cancel, "merge")
        move_into_place(staged, output, tmp)
        write(2)
    logger.info("merged %s into %s", source.describe(), output)
    return output
