"""transformers backend: the reference implementation, and the only one that runs an adapter
without exporting it first."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from whispertune.backends.base import DecodeOptions, Transcriber, Transcript
from whispertune.languages import language_code
from whispertune.models.sources import ModelSource

logger = logging.getLogger(__name__)


class HFTranscriber(Transcriber):
    name = "transformers"

    def __init__(
        self,
        model: str | ModelSource,
        *,
        dtype: str = "float32",
        threads: int = 0,
        device: str = "cpu",
    ) -> None:
        import torch

        from whispertune.models.loading import load_transformers

        if threads:
            torch.set_num_threads(threads)
        self.loaded = load_transformers(model, dtype=dtype, device=device)
        self.model = self.loaded.model
        self.processor = self.loaded.processor
        self.device = device
        self.dtype = next(self.model.parameters()).dtype
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", True))

    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
    ) -> list[Transcript]:
        import torch

        if not audios:
            return []
        default_lang = language_code(options.language) if options.language else None
        langs = [
            language_code(lang) if lang else default_lang
            for lang in (languages or [None] * len(audios))
        ]
        feats = self.processor.feature_extractor(
            list(audios), sampling_rate=16000, return_tensors="pt"
        ).input_features.to(self.device, self.dtype)
        # generate() takes one language for the batch or a list of one per clip.
        kwargs = {}
        if self.multilingual:
            kwargs["task"] = options.task
            if all(lang is not None for lang in langs):
                kwargs["language"] = langs if len(set(langs)) > 1 else langs[0]
        if options.initial_prompt:
            kwargs["prompt_ids"] = torch.tensor(
                self.processor.tokenizer.get_prompt_ids(options.initial_prompt)
            )
        with torch.inference_mode():
            out = self.model.generate(
                feats,
                num_beams=options.beam_size,
                do_sample=False,
                max_new_tokens=options.max_new_tokens,
                return_dict_in_generate=False,
                **kwargs,
            )
        tokenizer = self.processor.tokenizer
        eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        results = []
        lang_ids = {
            v: k[2:-2]
            for k, v in (getattr(self.model.generation_config, "lang_to_id", None) or {}).items()
        }
        for i, seq in enumerate(out.tolist()):
            text_ids = [t for t in seq if t < eot]
            detected = next((lang_ids[t] for t in seq if t in lang_ids), None)
            results.append(
                Transcript(
                    text=tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                    language=langs[i] or detected or ("en" if not self.multilingual else None),
                    tokens=text_ids,
                )
            )
        return results
