"""CTranslate2 backend: faster-whisper's runtime, driven in batches.

faster-whisper's ``WhisperModel.transcribe`` decodes one file at a time; for data sets of short
clips the runtime is far better used by encoding and decoding many clips in one ``generate``
call. Feature extraction and the tokenizer are faster-whisper's own, reused as is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from whispertune.backends.base import DecodeOptions, Transcriber, Transcript
from whispertune.errors import UserError
from whispertune.languages import language_code
from whispertune.models.sources import ModelSource, resolve

logger = logging.getLogger(__name__)

N_FRAMES = 3000  # 30 s of 10 ms mel frames: Whisper's fixed encoder window


def ct2_model_dir(source: ModelSource) -> Path:
    """The CTranslate2 directory for any source: native, or exported once and cached."""
    native = source.native_ct2_dir()
    if native is not None:
        return native
    from whispertune.export.ct2 import cached_ct2_export

    return cached_ct2_export(source)


class CT2Transcriber(Transcriber):
    name = "ct2"

    def __init__(
        self,
        model: str | ModelSource,
        *,
        compute_type: str = "int8",
        threads: int = 0,
        device: str = "cpu",
    ) -> None:
        import ctranslate2
        import tokenizers
        from faster_whisper.feature_extractor import FeatureExtractor

        self.source = model if isinstance(model, ModelSource) else resolve(model)
        self.model_dir = ct2_model_dir(self.source)
        threads = threads or min(8, os.cpu_count() or 1)
        try:
            self.model = ctranslate2.models.Whisper(
                str(self.model_dir),
                device=device,
                compute_type=compute_type,
                intra_threads=threads,
            )
        except ValueError as e:
            raise UserError(
                f"cannot load {self.model_dir} with compute type {compute_type}: {e}"
            ) from e
        self.hf_tokenizer = tokenizers.Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.multilingual = self.model.is_multilingual
        n_mels = self.model.n_mels
        pre = self.model_dir / "preprocessor_config.json"
        if pre.is_file():
            n_mels = json.loads(pre.read_text()).get("feature_size", n_mels)
        self.feature_extractor = FeatureExtractor(feature_size=n_mels)
        self.eot = self.hf_tokenizer.token_to_id("<|endoftext|>")

    def _features(self, audio: np.ndarray) -> np.ndarray:
        # Pad with 30 s of silence *before* the mel transform, as Whisper was trained (and as
        # transformers does): zero-padding the features instead changes the decoded text.
        feats = self.feature_extractor(audio, padding=N_FRAMES * 160)[:, :N_FRAMES]
        if feats.shape[1] < N_FRAMES:
            feats = np.pad(feats, ((0, 0), (0, N_FRAMES - feats.shape[1])))
        return feats.astype(np.float32)

    def _token(self, token: str) -> int:
        tid = self.hf_tokenizer.token_to_id(token)
        if tid is None:
            raise UserError(f"the model's tokenizer has no {token} token")
        return tid

    def _prompt(self, language: str | None, task: str, previous: str | None) -> list[int]:
        prompt: list[int] = []
        if previous:
            prompt += [self._token("<|startofprev|>")]
            prompt += self.hf_tokenizer.encode(
                " " + previous.strip(), add_special_tokens=False
            ).ids[-223:]
        prompt.append(self._token("<|startoftranscript|>"))
        if self.multilingual:
            prompt.append(self._token(f"<|{language}|>"))
            prompt.append(self._token(f"<|{task}|>"))
        prompt.append(self._token("<|notimestamps|>"))
        return prompt

    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
    ) -> list[Transcript]:
        import ctranslate2

        if not audios:
            return []
        default_lang = language_code(options.language) if options.language else None
        langs = [
            language_code(lang) if lang else default_lang
            for lang in (languages or [None] * len(audios))
        ]
        feats = np.stack([self._features(a) for a in audios])
        features = ctranslate2.StorageView.from_array(feats)
        encoded = self.model.encode(features, to_cpu=False)
        probs: list[float | None] = [None] * len(audios)
        if not self.multilingual:
            langs = ["en"] * len(audios)
        elif any(lang is None for lang in langs):
            detected = self.model.detect_language(encoded)
            for i, ranked in enumerate(detected):
                if langs[i] is None:
                    token, prob = ranked[0]
                    langs[i], probs[i] = token[2:-2], prob
        prompts = [self._prompt(lang, options.task, options.initial_prompt) for lang in langs]
        results = self.model.generate(
            encoded,
            prompts,
            beam_size=options.beam_size,
            max_length=min(448, options.max_new_tokens + max(len(p) for p in prompts)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )
        out = []
        for lang, prob, res in zip(langs, probs, results, strict=True):
            ids = [t for t in res.sequences_ids[0] if t < self.eot]
            out.append(
                Transcript(
                    text=self.hf_tokenizer.decode(ids).strip(),
                    language=lang,
                    language_probability=prob,
                    tokens=ids,
                    no_speech_prob=res.no_speech_prob,
                )
            )
        return out

    def close(self) -> None:
        self.model = None
