"""CTranslate2 backend: faster-whisper's runtime, driven in batches.

faster-whisper's ``WhisperModel.transcribe`` decodes one window at a time; here many windows
(short clips, or speech chunks of a long file) are encoded and decoded in one ``generate``
call, and the temperature fallback re-decodes only the windows that need it, still batched.

faster-whisper's own pieces are reused as they are: the model loader (``WhisperModel``, which
also reads the tokenizer and ``preprocessor_config.json``), its feature extractor, tokenizer
wrapper, prompt builder, suppressed-token list and word alignment.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE
from whispertune.backends.base import (
    CHUNK_SECONDS,
    ClipBatch,
    DecodeOptions,
    EncodedClip,
    Tokens,
    Transcriber,
    Transcript,
    Word,
)
from whispertune.backends.bf16_encoder import bf16_encoder_for
from whispertune.backends.decoder_scorer import (
    NOISE,
    PASS_SHAPE,
    ClipScores,
    DecoderScorer,
    scorer_for,
)
from whispertune.backends.decoding import (
    MAX_TARGET_TOKENS,
    avg_logprob_from_score,
    clip_duration,
    clip_languages,
    compression_ratio,
    detect_missing_languages,
    is_silence,
    needs_fallback,
    normalized_guards,
    split_timestamped,
)
from whispertune.errors import UserError
from whispertune.models.sources import ModelSource, resolve
from whispertune.output_style import read_style
from whispertune.rescoring import (
    prepare_rescoring,
    rescore_segments,
    rescore_text,
    wants_rescoring,
)
from whispertune.train.hardware import cpu_has_bf16

logger = logging.getLogger(__name__)

N_FRAMES = 3000  # 30 s of 10 ms mel frames: Whisper's fixed encoder window
HOP = 160
N_SAMPLES = int(CHUNK_SECONDS * SAMPLE_RATE)
# faster-whisper's word-timestamp punctuation merging (same defaults as its transcribe()).
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


def ct2_model_dir(source: ModelSource) -> Path:
    """The CTranslate2 directory for any source: native, or exported once and cached."""
    native = source.native_ct2_dir()
    if native is not None:
        return native
    from whispertune.export.ct2 import cached_ct2_export

    return cached_ct2_export(source)


@dataclass
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    ratio: float
    no_speech_prob: float
    temperature: float
    # The beam's other hypotheses (temperature 0, when the output is to be rescored) and
    # the length-normalized scores of all, this one first.
    alternatives: list[list[int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


@dataclass
class _Encoded(EncodedClip):
    """Clip ``index`` of an encoded batch: scoring reads its row of the encoder output (on a
    GPU, where that output stays on the device, it encodes the clip's features again)."""

    encoded: object  # ctranslate2.StorageView of the whole batch
    feats: np.ndarray
    index: int
    frames: int  # 10 ms frames of the clip's audio (align needs it; its probabilities do not)
    scores: ClipScores | None = None  # the rescoring decoder's state, made on first use


class CT2Transcriber(Transcriber):
    name = "ct2"
    supports_word_timestamps = True
    # On the CPU candidates are scored by the model's decoder in torch (decoder_scorer), end
    # of text included; on a GPU by CTranslate2's align, which scores the text tokens only.
    scores_end_of_text = True
    scores_per_token = True
    scores_prefixes = True  # on the CPU (the decoder scorer); not align, on a GPU

    def __init__(
        self,
        model: str | ModelSource,
        *,
        compute_type: str = "int8",
        threads: int = 0,
        device: str = "cpu",
        workers: int = 0,
        device_index: int = 0,
        bf16_encoder: bool | None = None,
    ) -> None:
        """``threads`` in all; ``workers`` (0 = auto) parts of a batch decoded at once, each
        on threads // workers cores. On CPU the default is two workers: parts of a batch on
        one core each used 5-13 % less CPU time than the whole batch on two cores (measured on
        2 cores, long-form and short clips) — small GEMMs scale poorly across threads — and
        keep both cores busy while the other worker is in Python.

        ``bf16_encoder`` (None = where it pays): the encoder in torch bf16 instead of
        CTranslate2's int8 (backends/bf16_encoder.py), on a CPU with native bf16 and the
        default compute type ``int8``; False, or the compute type ``int8_float32`` (the same
        as ``int8`` in CTranslate2 on a CPU), keeps CTranslate2's int8 encoder."""
        from faster_whisper import WhisperModel

        self.source = model if isinstance(model, ModelSource) else resolve(model)
        self.model_dir = ct2_model_dir(self.source)
        self.recorded_style = read_style(self.source.path)
        threads = threads or min(8, os.cpu_count() or 1)
        if workers <= 0:
            workers = 2 if device == "cpu" and threads >= 2 else 1
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        threads = max(1, threads // workers)
        self.threads_per_worker = threads
        try:
            # faster-whisper's loader: the CTranslate2 model plus the tokenizer and feature
            # extractor configured from the directory's preprocessor_config.json.
            self.fw = WhisperModel(
                str(self.model_dir),
                device=device,
                device_index=device_index,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=workers,
            )
        except (ValueError, RuntimeError) as e:
            raise UserError(
                f"cannot load {self.model_dir} with compute type {compute_type}: {e}"
            ) from e
        self.model = self.fw.model
        self.scores_end_of_text = self.scores_prefixes = device == "cpu"
        if bf16_encoder is None:
            bf16_encoder = compute_type == "int8" and cpu_has_bf16()
        # on a GPU the encoder output stays on the device: CTranslate2's encoder there
        bf16_encoder = bf16_encoder and device == "cpu"
        self._bf16_encoder = bf16_encoder_for(self.model_dir, threads) if bf16_encoder else None
        # rescoring's decoder, on first use: in bf16 where the encoder is (the CPU has it,
        # and the choice then depends on the CPU's arithmetic anyway)
        self._scorer: DecoderScorer | None = None
        self._scorer_precision = "bfloat16" if bf16_encoder else "float16"
        self.score_noise = NOISE[self._scorer_precision]
        self.score_shape = PASS_SHAPE.get(self._scorer_precision)
        self._warm_up: threading.Thread | None = None
        if workers > 1:
            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ct2-worker")
        self.device = device
        self.hf_tokenizer = self.fw.hf_tokenizer
        self.feature_extractor = self.fw.feature_extractor
        self.multilingual = self.model.is_multilingual
        self.eot = self.hf_tokenizer.token_to_id("<|endoftext|>")
        self.timestamp_begin = self.hf_tokenizer.token_to_id("<|notimestamps|>") + 1
        self._suppress_cache: dict[str, tuple[int, ...]] = {}

    # -- features ------------------------------------------------------------------------------

    def _features(self, audio: np.ndarray) -> np.ndarray:
        """Log-mel of one ≤30 s clip as Whisper sees it: padded with silence to 30 s.

        Whisper pads the *audio* with silence before the mel transform (zero-padding the
        features instead, as faster-whisper does, changes the decoded text). Frames that see
        only padding all have the same value — the floor of the log-mel normalization, max - 8
        — so only the clip's own frames are computed and the rest is filled: the result is
        identical to transforming the padded audio, several times cheaper for short clips.
        """
        audio = np.asarray(audio, dtype=np.float32)[:N_SAMPLES]
        fe = self.feature_extractor
        if len(audio) == 0:
            return np.full((fe.mel_filters.shape[0], N_FRAMES), -1.5, dtype=np.float32)
        # 3 extra hops of zeros: the last frames touching audio see exactly what they would
        # see in the padded signal (the STFT window is 400 samples, centred).
        feats = fe(audio, padding=3 * HOP)
        n = min(N_FRAMES, feats.shape[1])
        out = np.empty((feats.shape[0], N_FRAMES), dtype=np.float32)
        out[:, :n] = feats[:, :n]
        if n < N_FRAMES:
            # log10(1e-10) = -10, clamped to max - 8, then (x + 4) / 4
            out[:, n:] = max(-1.5, float(feats.max()) - 2.0)
        return out

    def encode_text(self, text: str) -> list[int]:
        return self.hf_tokenizer.encode(text, add_special_tokens=False).ids

    def _tokenizer(self, language: str | None, task: str):
        from faster_whisper.tokenizer import Tokenizer

        if self.multilingual:
            if self.hf_tokenizer.token_to_id(f"<|{language}|>") is None:
                raise UserError(f"this model has no language token for {language!r}")
            return Tokenizer(self.hf_tokenizer, True, task=task, language=language)
        return Tokenizer(self.hf_tokenizer, False)

    def _suppress_tokens(self, tokenizer) -> list[int]:
        from faster_whisper.transcribe import get_suppressed_tokens

        key = "multi" if self.multilingual else "en"
        if key not in self._suppress_cache:
            self._suppress_cache[key] = get_suppressed_tokens(tokenizer, [-1])
        return list(self._suppress_cache[key])

    # -- decoding ------------------------------------------------------------------------------

    def _encode(self, feats: np.ndarray):
        import ctranslate2

        if self._bf16_encoder is not None:
            return ctranslate2.StorageView.from_array(self._bf16_encoder(feats))
        return self.model.encode(ctranslate2.StorageView.from_array(feats), to_cpu=False)

    def _subset(self, encoded, feats: np.ndarray, idx: list[int], total: int):
        """Encoder output for some clips of a batch (for fallback passes)."""
        import ctranslate2

        if len(idx) == total:
            return encoded
        if self.device == "cpu":
            arr = np.asarray(encoded)
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(arr[idx]))
        return self._encode(np.ascontiguousarray(feats[idx]))

    def detect_languages(self, encoded) -> list[list[tuple[str, float]]]:
        """Ranked (code, probability) per clip of an encoded batch."""
        return [
            [(token[2:-2], prob) for token, prob in ranked]
            for ranked in self.model.detect_language(encoded)
        ]

    def _transcribe_clips(self, batch: ClipBatch, options: DecodeOptions) -> list[Transcript]:
        self._prepare_rescoring(batch, options)
        n = len(batch)
        if self._pool is None or n < 2:
            return self._transcribe_batch(batch, options)
        # Split the batch into parts for the workers (CTranslate2 releases the GIL): twice as
        # many parts as workers, taken in turn, so no core idles while the other finishes a
        # long part. Each part is reported done as it finishes, in the caller's thread.
        k = min(2 * self.workers, n)
        bounds = [round(i * n / k) for i in range(k + 1)]
        futures = {
            self._pool.submit(self._transcribe_batch, batch.part(a, b), options): (a, b)
            for a, b in zip(bounds, bounds[1:], strict=False)
        }
        for future in as_completed(futures):
            future.result()  # a failed part fails the call now
            if batch.clip_done is not None:
                for i in range(*futures[future]):
                    batch.clip_done(i)
        return [t for f in futures for t in f.result()]

    def _prepare_rescoring(self, batch: ClipBatch, options: DecodeOptions) -> None:
        """On the first batch that will be rescored, load what rescoring needs (torch, the
        decoder scorer, pypinyin and the word tables: 0.6-0.8 CPU s; lexicon.py reads
        the tables' buckets as they are looked up) in a thread
        of its own while the clips are encoded and decoded. Loaded by the first clip to be
        rescored instead, it held up the other worker too, which waits on the same loads:
        a core idle for seconds per run (5 % of the 56 AISHELL test clips' time)."""
        if self._warm_up is not None or not self.scores_end_of_text:
            return
        languages = batch.languages or [None]
        if not any(
            wants_rescoring(options.rescore, lang or options.language, options.task)
            for lang in languages
        ):
            return
        self._warm_up = threading.Thread(
            target=self._load_rescoring, name="rescoring-warm-up", daemon=True
        )
        self._warm_up.start()

    def _load_rescoring(self) -> None:
        try:
            self._decoder_scorer()
            prepare_rescoring()
        except Exception:  # the first clip to be rescored loads them again and says why
            logger.debug("loading rescoring ahead of time failed", exc_info=True)

    def _decoder_scorer(self) -> DecoderScorer:
        if self._scorer is None:  # the workers may race here: scorer_for gives them one
            self._scorer = scorer_for(
                self.model_dir,
                self.eot,
                self.threads_per_worker,
                self._scorer_precision,
            )
        return self._scorer

    def _transcribe_batch(self, batch: ClipBatch, options: DecodeOptions) -> list[Transcript]:
        audios = batch.audios
        if not audios:
            return []
        timestamps = batch.timestamps
        options = normalized_guards(options)
        langs = clip_languages(options, batch.languages, len(audios))
        feats = np.stack([self._features(a) for a in audios])
        encoded = self._encode(feats)
        langs, probs = detect_missing_languages(
            langs, self.multilingual, lambda: [r[0] for r in self.detect_languages(encoded)]
        )
        tokenizers = {
            (lang, options.task): self._tokenizer(lang, options.task) for lang in set(langs)
        }
        prompt_prefix = self.initial_prompt_tokens(options)
        prompts = []
        for i, lang in enumerate(langs):
            previous = list(prompt_prefix)
            if batch.previous_tokens is not None and batch.previous_tokens[i]:
                previous += list(batch.previous_tokens[i])
            prompts.append(
                self.fw.get_prompt(
                    tokenizers[(lang, options.task)],
                    previous,
                    without_timestamps=not timestamps,
                )
            )
        rescore = [wants_rescoring(options.rescore, lang, options.task) for lang in langs]
        decoded = self._generate_with_fallback(
            encoded,
            feats,
            prompts,
            options,
            tokenizers[(langs[0], options.task)],
            timestamps,
            rescore=any(rescore) and not timestamps,
        )
        out = []
        for i, (lang, prob, res) in enumerate(zip(langs, probs, decoded, strict=True)):
            duration = clip_duration(audios[i])
            silence = is_silence(options, res.avg_logprob, res.no_speech_prob)
            t = Transcript(
                text="",
                language=lang,
                language_probability=prob,
                no_speech_prob=res.no_speech_prob,
                avg_logprob=res.avg_logprob,
                compression_ratio=res.ratio,
                temperature=res.temperature,
                consumed=duration,
                silence=silence,
            )
            if not silence:
                text_ids = [x for x in res.tokens if x < self.eot]
                t.tokens = text_ids
                t.text = self.hf_tokenizer.decode(text_ids).strip()
                rescored = rescore[i] and res.temperature == 0 and bool(t.text)
                clip = _Encoded(encoded, feats, i, min(N_FRAMES, max(1, len(audios[i]) // HOP)))
                if rescored and not timestamps:
                    # the beam's hypotheses, with their total log-probabilities (end of text
                    # included: faster-whisper's reading of CTranslate2's normalized score)
                    beams = [res.tokens, *res.alternatives]
                    hypotheses = [
                        self.hf_tokenizer.decode([x for x in ids if x < self.eot]).strip()
                        for ids in beams
                    ]
                    totals = None
                    if not self.scores_end_of_text:
                        totals = [
                            score * len(ids) for ids, score in zip(beams, res.scores, strict=True)
                        ]
                    t.text, t.tokens = rescore_text(self, clip, prompts[i], hypotheses, totals)
                if timestamps:
                    t.segments, t.consumed = split_timestamped(
                        res.tokens,
                        self.timestamp_begin,
                        self.eot,
                        duration,
                        self.hf_tokenizer.decode,
                    )
                    if rescored:
                        tk = tokenizers[(lang, options.task)]
                        rescore_segments(
                            self, clip, [*tk.sot_sequence, tk.no_timestamps], t.segments
                        )
                    t.tokens = [x for s in t.segments for x in s.tokens]
                    t.text = "".join(s.text for s in t.segments).strip()
            out.append(t)
        if timestamps and batch.word_timestamps:
            self._add_words(out, encoded, feats, langs, options.task, audios)
        return out

    def _encode_clip(self, audio: np.ndarray) -> _Encoded:
        feats = self._features(audio)[None]
        return _Encoded(self._encode(feats), feats, 0, min(N_FRAMES, max(1, len(audio) // HOP)))

    def _score_tokens(self, clip: _Encoded, prompt: Tokens, seqs: list[Tokens]) -> list[float]:
        """Summed log-probabilities of each sequence's tokens (and of the end of text after
        it, where ``scores_end_of_text``: on the CPU)."""
        return [float(logp.sum()) for logp in self._token_logprobs(clip, prompt, seqs)]

    def _token_logprobs(
        self,
        clip: _Encoded,
        prompt: Tokens,
        seqs: list[Tokens],
        limits: list[int | None] | None = None,
    ) -> list[np.ndarray]:
        """Log-probability of each token of each sequence. On the CPU: the model's decoder
        in torch (decoder_scorer: the clip's cross-attention projected once, shared starts
        computed once, only the leading terms ``limits`` asks for), the end of text as the
        last term. On a GPU: CTranslate2's align over one copy of the clip's encoder output
        per sequence (each copy is projected again), text tokens only, all of them."""
        if self.scores_end_of_text:  # on the CPU
            scorer = self._decoder_scorer()
            if clip.scores is None:
                clip.scores = scorer.clip(np.asarray(clip.encoded)[clip.index])
            return scorer.logprobs(clip.scores, prompt, seqs, limits)
        # on a GPU the encoder output stays on the device: encode one copy per sequence
        row = clip.feats[clip.index : clip.index + 1]
        repeated = self._encode(np.ascontiguousarray(np.repeat(row, len(seqs), 0)))
        aligned = self.model.align(repeated, prompt, seqs, clip.frames)
        return [np.log(np.maximum(r.text_token_probs, 1e-12)) for r in aligned]

    def _generate_with_fallback(
        self,
        encoded,
        feats,
        prompts,
        options: DecodeOptions,
        tokenizer,
        timestamps: bool,
        rescore: bool = False,
    ) -> list[_Decoded]:
        """Whisper's temperature fallback, batched: every clip is decoded at the first
        temperature; only the clips whose output loops (compression ratio) or is improbable
        (log-prob) are decoded again, together, at the next one. A clip that fails at every
        temperature keeps its most probable non-looping candidate, as in Whisper."""
        n = len(prompts)
        final: list[_Decoded | None] = [None] * n
        candidates: list[list[_Decoded]] = [[] for _ in range(n)]
        pending = list(range(n))
        longest_prompt = max(len(p) for p in prompts)
        max_new = options.max_new_tokens or MAX_TARGET_TOKENS
        max_length = min(MAX_TARGET_TOKENS, longest_prompt + max_new)
        suppress = self._suppress_tokens(tokenizer)
        temperatures = options.temperatures or [0.0]
        n_best = options.beam_size if rescore else 1
        for temperature in temperatures:
            sub = self._subset(encoded, feats, pending, n)
            if temperature > 0:
                kw = dict(
                    beam_size=1,
                    num_hypotheses=options.best_of,
                    sampling_topk=0,
                    sampling_temperature=temperature,
                )
            else:
                kw = dict(beam_size=options.beam_size, num_hypotheses=n_best)
            results = self.model.generate(
                sub,
                [prompts[i] for i in pending],
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress,
                repetition_penalty=options.repetition_penalty,
                no_repeat_ngram_size=options.no_repeat_ngram_size,
                max_initial_timestamp_index=50,  # first timestamp <= 1 s, as Whisper
                **kw,
            )
            still = []
            for i, res in zip(pending, results, strict=True):
                tokens = res.sequences_ids[0]
                text = self.hf_tokenizer.decode([t for t in tokens if t < self.eot])
                d = _Decoded(
                    tokens=tokens,
                    avg_logprob=avg_logprob_from_score(res.scores[0], len(tokens)),
                    ratio=compression_ratio(text.strip()),
                    no_speech_prob=res.no_speech_prob,
                    temperature=temperature,
                    alternatives=list(res.sequences_ids[1:]),
                    scores=list(res.scores),
                )
                candidates[i].append(d)
                if needs_fallback(options, d.ratio, d.avg_logprob, d.no_speech_prob):
                    still.append(i)
                else:
                    final[i] = d
            pending = still
            if not pending:
                break
            logger.debug("temperature %.1f: %d window(s) decoded again", temperature, len(pending))
        for i in pending:
            ok = [
                c
                for c in candidates[i]
                if options.compression_ratio_threshold is None
                or c.ratio <= options.compression_ratio_threshold
            ]
            best = max(ok or candidates[i], key=lambda c: c.avg_logprob)
            best.temperature = temperatures[-1]
            final[i] = best
        return [d for d in final if d is not None]

    def _add_words(self, out, encoded, feats, langs, task, audios) -> None:
        """Word times from cross-attention alignment (faster-whisper's add_word_timestamps,
        which runs CTranslate2's align and merges punctuation), one clip at a time because
        each clip has its own language prompt."""
        n = len(out)
        for i, t in enumerate(out):
            if not t.segments:
                continue
            seg_dicts = [
                {"seek": 0, "start": s.start, "end": s.end, "tokens": s.tokens} for s in t.segments
            ]
            num_frames = min(N_FRAMES, max(1, len(audios[i]) // HOP))
            self.fw.add_word_timestamps(
                [seg_dicts],
                self._tokenizer(langs[i], task),
                self._subset(encoded, feats, [i], n),
                num_frames,
                PREPEND_PUNCTUATIONS,
                APPEND_PUNCTUATIONS,
                last_speech_timestamp=0.0,
            )
            for seg, d in zip(t.segments, seg_dicts, strict=True):
                seg.words = [
                    Word(
                        start=float(w["start"]),
                        end=float(w["end"]),
                        word=w["word"],
                        probability=float(w["probability"]),
                    )
                    for w in d.get("words", [])
                ]
                if seg.words:
                    seg.start, seg.end = float(d["start"]), float(d["end"])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.model = None
        self.fw = None


__all__ = ["CT2Transcriber", "ct2_model_dir"]
