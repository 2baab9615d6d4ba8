"""Export any model source to a CTranslate2 directory that faster-whisper loads unchanged.

The weight conversion is CTranslate2's own ``TransformersConverter``; what it does not write,
and faster-whisper reads, is added here: ``preprocessor_config.json`` (mel bins; transformers 5
no longer writes it through the processor) and ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from whispertune.errors import UserError
from whispertune.models.cache import cache_dir
from whispertune.models.sources import ModelSource, SourceOptions, resolve
from whispertune.output_style import copy_style
from whispertune.progress import ProgressCallback, Reporter, check_cancel
from whispertune.staging import move_into_place, refuse_existing, staging_dir

logger = logging.getLogger(__name__)

QUANTIZATIONS = (
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "float16",
    "bfloat16",
    "float32",
)


@dataclass(kw_only=True)
class ExportCT2Options(SourceOptions):
    """Options of ``whispertune export ct2`` (``--model`` from SourceOptions)."""

    output: Path = field(metadata={"help": "directory to create"})
    quantization: str = field(
        default="int8", metadata={"help": "weight storage", "choices": list(QUANTIZATIONS)}
    )
    force: bool = field(default=False, metadata={"help": "replace an existing output directory"})


def _merged_dir(
    source: ModelSource, workdir: Path, progress: ProgressCallback | None
) -> Path:
    """A transformers directory holding the full weights (an adapter is merged first)."""
    if source.adapter_dir is None:
        return source.hf_dir()
    from whispertune.models.loading import load_transformers

    report = Reporter(progress, "merge", total=1, unit="model")
    report(0, message=f"merging {source.describe()}")
    loaded = load_transformers(source, merge_adapter=True)
    out = workdir / "merged"
    loaded.model.save_pretrained(out)
    loaded.processor.tokenizer.save_pretrained(out)
    loaded.processor.feature_extractor.save_pretrained(out)
    report(1)
    return out


def export_ct2(
    model: str | ModelSource,
    output: str | Path,
    *,
    quantization: str | None = "int8",
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Write ``output`` (a CTranslate2 model directory); refuses to overwrite without ``force``.

    Built in a temporary folder beside ``output`` and moved in at the end (an old ``output``
    is moved aside first and deleted last). Events: "merge" (adapters only), "convert" and
    "write" (support files), each from 0 to its total of 1. ``cancel`` is checked between
    them; a cancelled export raises :class:`whispertune.progress.Cancelled` and leaves
    nothing behind (``state="removed"``; an old ``output`` stays as it was).
    """
    import ctranslate2

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise UserError(
            f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}"
        )
    source = model if isinstance(model, ModelSource) else resolve(model)
    output = Path(output)
    refuse_existing(output, force)
    with staging_dir(output, ".ct2-export-") as work:
        check_cancel(cancel, "export")
        hf_dir = _merged_dir(source, work, progress)
        check_cancel(cancel, "export")
        staged = work / "out"
        copy = [f for f in SUPPORT_FILES if (hf_dir / f).is_file()]
        converter = ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=copy)
        convert = Reporter(progress, "convert", total=1, unit="model")
        convert(0)
        try:
            converter.convert(str(staged), quantization=quantization, force=True)
        except (ValueError, NotImplementedError, OSError) as e:
            raise UserError(f"cannot convert {source.describe()} to CTranslate2: {e}") from e
        convert(1)
        check_cancel(cancel, "export")
        write = Reporter(progress, "write", total=1, unit="step")
        write(0)
        _ensure_support_files(hf_dir, staged)
        _check_alignment_heads(hf_dir, staged)
        copy_style(source.path, staged)
        check_cancel(cancel, "export")
        move_into_place(staged, output, work)
        write(1)
    return output


SUPPORT_FILES = ("tokenizer.json", "preprocessor_config.json")


def _ensure_support_files(hf_dir: Path, out: Path) -> None:
    """Write what faster-whisper reads beside ``model.bin`` when the checkpoint lacks it.

    ``tokenizer.json``: checkpoints saved with only ``vocab.json``/``merges.txt`` get one from
    the fast tokenizer. ``preprocessor_config.json``: transformers 5 no longer writes it through
    ``WhisperProcessor.save_pretrained``; without it faster-whisper assumes 80 mel bins, which
    is wrong for large-v3 style models (128), so it is written from the model's config.
    """
    if not (out / "tokenizer.json").is_file():
        import shutil
        import tempfile

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir)
        with tempfile.TemporaryDirectory() as tmp:
            tok.save_pretrained(tmp)
            if not (Path(tmp) / "tokenizer.json").is_file():
                raise UserError(f"{hf_dir}: cannot build tokenizer.json from its tokenizer files")
            shutil.copy(Path(tmp) / "tokenizer.json", out / "tokenizer.json")
    if not (out / "preprocessor_config.json").is_file():
        from transformers import WhisperConfig, WhisperFeatureExtractor

        mels = WhisperConfig.from_pretrained(hf_dir).num_mel_bins
        WhisperFeatureExtractor(feature_size=mels).to_json_file(out / "preprocessor_config.json")


def _check_alignment_heads(hf_dir: Path, out: Path) -> None:
    """Keep only alignment heads that exist in the model.

    The heads come from the checkpoint's generation config; one copied from another model
    size (easy to do when building or fine-tuning a checkpoint) names layers the model does
    not have, and CTranslate2's ``align`` — word timestamps, in faster-whisper too — then
    crashes the process. Without valid heads CTranslate2's default (every head of the
    decoder's second half) is used.
    """
    import json

    from transformers import WhisperConfig

    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    heads = config.get("alignment_heads")
    if not heads:
        return
    hf = WhisperConfig.from_pretrained(hf_dir)
    layers, n_heads = hf.decoder_layers, hf.decoder_attention_heads
    valid = [[layer, head] for layer, head in heads if layer < layers and head < n_heads]
    if len(valid) == len(heads):
        return
    logger.warning(
        "%d of %d alignment heads do not exist in this %d-layer, %d-head decoder; %s",
        len(heads) - len(valid),
        len(heads),
        layers,
        n_heads,
        "dropped" if valid else "using every head of the second half of the decoder",
    )
    if not valid:
        valid = [[layer, head] for layer in range(layers // 2, layers) for head in range(n_heads)]
    config["alignment_heads"] = valid
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def cached_ct2_export(source: ModelSource, quantization: str | None = None) -> Path:
    """A CTranslate2 copy of ``source`` kept in the cache (stored float; quantized at load)."""
    key = hashlib.sha256(f"{source.kind}:{source.path}:{quantization}".encode()).hexdigest()[:20]
    stamp = "".join(
        f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size};"
        for p in sorted(source.path.glob("*"))
        if p.is_file()
    )
    target = cache_dir("ct2-export") / key
    marker = target / ".complete"
    if marker.is_file() and marker.read_text() == stamp:
        return target
    logger.info("exporting %s to CTranslate2 (once) -> %s", source.describe(), target)
    export_ct2(source, target, quantization=quantization, force=True)
    marker.write_text(stamp)
    return target
