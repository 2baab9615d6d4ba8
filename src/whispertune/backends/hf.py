"""transformers backend: the reference implementation, and the only one that runs an adapter
without exporting it first.

Timestamps and the hallucination guards (temperature fallback, compression-ratio and log-prob
checks, no-speech skip) are transformers' own ``WhisperForConditionalGeneration.generate``
features, given the same thresholds as the CTranslate2 backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whispertune.audio import SAMPLE_RATE
from whispertune.backends.base import (
    CHUNK_SECONDS,
    ClipBatch,
    ClipSegment,
    DecodeOptions,
    EncodedClip,
    Tokens,
    Transcriber,
    Transcript,
)
from whispertune.backends.decoding import (
    clip_duration,
    clip_languages,
    detect_missing_languages,
    normalized_guards,
)
from whispertune.errors import UserError
from whispertune.models.sources import ModelSource
from whispertune.output_style import OutputStyle, read_style
from whispertune.rescoring import rescore_text, wants_rescoring

logger = logging.getLogger(__name__)


@dataclass
class _Features(EncodedClip):
    """One clip's log-mel features (a 1 x mels x 3000 tensor on the model's device)."""

    feats: object


class HFTranscriber(Transcriber):
    """Calls from several threads are serialized (``_lock``): ``generate`` keeps per-call state
    on the model and its generation config, so two decodes at once are not safe."""

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
        self._bind(self.loaded.model, self.loaded.processor, device)
        self.recorded_style = read_style(self.loaded.source.path)

    @classmethod
    def from_loaded(
        cls, model, processor, *, device: str | None = None, style: OutputStyle | None = None
    ) -> HFTranscriber:
        """A transcriber over a model already in memory, e.g. the trainer's own mid-training,
        so that validation decodes exactly as ``whispertune evaluate`` does without saving and
        reloading it. The caller keeps the model (and its train/eval mode); ``style`` is the
        output style its training transcripts recorded."""
        self = cls.__new__(cls)
        self.loaded = None
        self._bind(model, processor, device or str(next(model.parameters()).device))
        self.recorded_style = style or OutputStyle()
        return self

    def _bind(self, model, processor, device: str) -> None:
        # re-entrant: a decode rescores its clips through score_tokens, which locks too
        self._lock = threading.RLock()
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = next(self.model.parameters()).dtype
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", True))
        tokenizer = self.processor.tokenizer
        self.eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.sot_prev = tokenizer.convert_tokens_to_ids("<|startofprev|>")
        lang_to_id = getattr(self.model.generation_config, "lang_to_id", None) or {}
        self.lang_ids = {v: k[2:-2] for k, v in lang_to_id.items()}

    def encode_text(self, text: str) -> list[int]:
        return self.processor.tokenizer.encode(text, add_special_tokens=False)

    def _detect(self, feats) -> list[tuple[str, float]]:
        """Most probable language and its probability per clip (softmax over the language
        tokens at the first decoding step, as Whisper detects)."""
        import torch

        if not self.lang_ids:
            raise UserError("this model cannot detect the language; pass --language")
        sot = self.model.generation_config.decoder_start_token_id
        ids = list(self.lang_ids)
        with torch.inference_mode():
            out = self.model(
                input_features=feats,
                decoder_input_ids=torch.full((feats.shape[0], 1), sot, device=feats.device),
            )
            probs = out.logits[:, -1, ids].float().softmax(-1)
        best = probs.argmax(-1).tolist()
        return [(self.lang_ids[ids[b]], float(probs[i, b])) for i, b in enumerate(best)]

    def _transcribe_clips(self, batch: ClipBatch, options: DecodeOptions) -> list[Transcript]:
        with self._lock:
            return self._decode(batch, options)

    def _decode(self, batch: ClipBatch, options: DecodeOptions) -> list[Transcript]:
        import torch

        audios, timestamps, previous_tokens = batch.audios, batch.timestamps, batch.previous_tokens
        if not audios:
            return []
        if batch.word_timestamps:
            raise UserError("word timestamps need the ct2 backend (--backend ct2)")
        options = normalized_guards(options)
        n = len(audios)
        if (
            previous_tokens is not None
            and n > 1
            and len({tuple(p or ()) for p in previous_tokens}) > 1
        ):
            # generate() takes one prompt for the whole batch
            return [t for i in range(n) for t in self._decode(batch.part(i, i + 1), options)]
        langs = clip_languages(options, batch.languages, n)
        feats = self._features(audios)
        langs, probs = detect_missing_languages(
            langs, self.multilingual, lambda: self._detect(feats)
        )
        kwargs: dict = {}
        if self.multilingual:
            kwargs["task"] = options.task
            kwargs["language"] = langs if len(set(langs)) > 1 else langs[0]
        prompt = self.initial_prompt_tokens(options)
        if previous_tokens is not None and previous_tokens[0]:
            prompt += list(previous_tokens[0])
        if prompt:
            kwargs["prompt_ids"] = torch.tensor([self.sot_prev, *prompt[-223:]], device=self.device)
        temps = options.temperatures or [0.0]
        kwargs["temperature"] = tuple(temps) if len(temps) > 1 else temps[0]
        if len(temps) > 1 and options.compression_ratio_threshold is not None:
            kwargs["compression_ratio_threshold"] = options.compression_ratio_threshold
        if options.log_prob_threshold is not None and len(temps) > 1:
            kwargs["logprob_threshold"] = options.log_prob_threshold
            if options.no_speech_threshold is not None:
                kwargs["no_speech_threshold"] = options.no_speech_threshold
        if options.max_new_tokens:
            kwargs["max_new_tokens"] = options.max_new_tokens
        if options.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = options.repetition_penalty
        if options.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = options.no_repeat_ngram_size
        kwargs["num_beams"] = options.beam_size
        with torch.inference_mode():
            result = self.model.generate(
                feats,
                do_sample=False,
                return_timestamps=timestamps,
                return_segments=timestamps,
                **kwargs,
            )
        tokenizer = self.processor.tokenizer
        results = []
        if timestamps:
            for i, segs in enumerate(result["segments"]):
                duration = clip_duration(audios[i])
                clip_segments = []
                for s in segs:
                    ids = [t for t in s["tokens"].tolist() if t < self.eot]
                    text = tokenizer.decode(ids, skip_special_tokens=True)
                    if text.strip():
                        start = min(float(s["start"]), duration)
                        end = min(float(s["end"]), duration)
                        clip_segments.append(ClipSegment(start, max(start, end), text, ids))
                results.append(
                    Transcript(
                        text="".join(s.text for s in clip_segments).strip(),
                        language=langs[i],
                        language_probability=probs[i],
                        tokens=[t for s in clip_segments for t in s.tokens],
                        segments=clip_segments,
                        consumed=duration,
                    )
                )
            return results
        sequences = result if isinstance(result, torch.Tensor) else result["sequences"]
        for i, seq in enumerate(sequences.tolist()):
            text_ids = [t for t in seq if t < self.eot]
            detected = next((self.lang_ids[t] for t in seq if t in self.lang_ids), None)
            t = Transcript(
                text=tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                language=langs[i] or detected or ("en" if not self.multilingual else None),
                language_probability=probs[i],
                tokens=text_ids,
            )
            if t.text and wants_rescoring(options.rescore, t.language, options.task):
                clip = _Features(feats[i : i + 1])
                prompt = self._start_tokens(t.language, options.task)
                t.text, t.tokens = rescore_text(self, clip, prompt, [t.text])
            results.append(t)
        return results

    def _features(self, audios: Sequence[np.ndarray]):
        """Log-mel features of clips (the first 30 s of each), on the model's device."""
        return self.processor.feature_extractor(
            [np.asarray(a, dtype=np.float32)[: int(CHUNK_SECONDS * SAMPLE_RATE)] for a in audios],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
        ).input_features.to(self.device, self.dtype)

    def _start_tokens(self, language: str | None, task: str) -> list[int]:
        """The decoder's start without timestamps: start of transcript, language and task (a
        multilingual model), no-timestamps."""
        config = self.model.generation_config
        start = [config.decoder_start_token_id]
        if self.multilingual:
            start += [config.lang_to_id[f"<|{language}|>"], config.task_to_id[task]]
        start.append(config.no_timestamps_token_id)
        return start

    def _encode_clip(self, audio: np.ndarray) -> _Features:
        return _Features(self._features([audio]))

    def _score_tokens(self, clip: _Features, prompt: Tokens, seqs: list[Tokens]) -> list[float]:
        """Summed log-probabilities of each sequence's tokens and the end of text after them (a
        candidate cut short pays for stopping early), by one teacher-forced decoder pass."""
        import torch

        with self._lock:
            start = prompt
            width = len(start) + max(len(s) for s in seqs) + 1
            ids = torch.full((len(seqs), width), self.eot, dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(start) + len(s)] = torch.tensor(start + s)
            with torch.inference_mode():
                encoded = self.model.model.encoder(clip.feats).last_hidden_state
                logits = self.model(
                    encoder_outputs=(encoded.expand(len(seqs), -1, -1),),
                    decoder_input_ids=ids.to(self.device),
                ).logits.float()
        logprobs = logits.log_softmax(-1)
        out = []
        for row, s in enumerate(seqs):
            positions = torch.arange(len(start) - 1, len(start) + len(s))
            targets = torch.tensor([*s, self.eot])
            out.append(float(logprobs[row, positions, targets].sum()))
        return out
