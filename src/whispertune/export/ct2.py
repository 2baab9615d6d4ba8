"""Export any model source to a CTranslate2 directory that faster-whisper loads unchanged.

The weight conversion is CTranslate2's own ``TransformersConverter``; what it does not write,
and faster-whisper reads, is added here: ``preprocessor_config.json`` (mel bins; transformers 5
no longer writes it through the processor) and ``tokenizer.json``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from whispertune.errors import UserError
from whispertune.models.cache import cache_dir
from whispertune.models.sources import ModelSource, resolve

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


def _merged_dir(source: ModelSource, workdir: Path) -> Path:
    """A transformers directory holding the full weights (an adapter is merged first)."""
    if source.adapter_dir is None:
        return source.hf_dir()
    from whispertune.models.loading import load_transformers

    loaded = load_transformers(source, merge_adapter=True)
    out = workdir / "merged"
    loaded.model.save_pretrained(out)
    loaded.processor.tokenizer.save_pretrained(out)
    loaded.processor.feature_extractor.save_pretrained(out)
    return out


def export_ct2(
    model: str | ModelSource,
    output: str | Path,
    *,
    quantization: str | None = "int8",
    force: bool = False,
) -> Path:
    """Write ``output`` (a CTranslate2 model directory); refuses to overwrite without ``force``."""
    import ctranslate2

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise UserError(
            f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}"
        )
    source = model if isinstance(model, ModelSource) else resolve(model)
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise UserError(f"{output}: already exists and is not empty; pass --force to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".ct2-export-") as tmp:
        work = Path(tmp)
        hf_dir = _merged_dir(source, work)
        staged = work / "out"
        converter = ctranslate2.converters.TransformersConverter(
            str(hf_dir), copy_files=["tokenizer.json", "preprocessor_config.json"]
        )
        converter.convert(str(staged), quantization=quantization, force=True)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staged, output)
    return output


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
