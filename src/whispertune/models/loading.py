"""Load a resolved model into transformers, whatever form it came in."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from whispertune.errors import UserError
from whispertune.models.sources import ModelSource, resolve

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any  # WhisperForConditionalGeneration (or a PeftModel around it)
    processor: Any  # WhisperProcessor
    source: ModelSource

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def feature_extractor(self):
        return self.processor.feature_extractor


def _dtype(name: str):
    import torch

    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    try:
        return table[name]
    except KeyError:
        raise UserError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from None


def load_processor(source: ModelSource):
    """WhisperProcessor of a model; an adapter's own tokenizer files win over its base's."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    hf_dir = source.hf_dir()
    tok_dir = (
        source.adapter_dir
        if source.adapter_dir and (source.adapter_dir / "tokenizer_config.json").is_file()
        else hf_dir
    )
    tokenizer = WhisperTokenizer.from_pretrained(tok_dir)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(hf_dir)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def load_transformers(
    spec: str | ModelSource,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    merge_adapter: bool = True,
    trainable_adapter: bool = False,
) -> LoadedModel:
    """A transformers Whisper model ready for ``generate``.

    An adapter is applied on its base; for inference it is merged (``merge_adapter``) so
    decoding runs at the plain model's speed.
    """
    from transformers import WhisperForConditionalGeneration

    source = spec if isinstance(spec, ModelSource) else resolve(spec)
    model = WhisperForConditionalGeneration.from_pretrained(source.hf_dir(), dtype=_dtype(dtype))
    if source.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.adapter_dir, is_trainable=trainable_adapter)
        if merge_adapter and not trainable_adapter:
            model = model.merge_and_unload()
    model.to(device)
    model.train(False)
    return LoadedModel(model=model, processor=load_processor(source), source=source)
