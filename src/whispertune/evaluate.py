"""Score a model on a manifest: CER/WER with their error counts, speed, and every utterance.

The same normalization is applied to references and hypotheses (see whispertune.text), and
CER is computed on characters with spaces removed, WER on words; which one is the default
follows the data's language (CER for languages written without spaces between words).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE, AudioError, load_audio
from whispertune.backends import ModelOptions, create_transcriber
from whispertune.backends.base import DecodeOptions, Transcriber, Transcript, join_texts
from whispertune.data.manifest import Sample, read_manifest
from whispertune.errors import UserError
from whispertune.languages import NO_SPACE_LANGUAGES, language_code, resolved_language
from whispertune.progress import ProgressCallback, Reporter, check_cancel
from whispertune.staging import atomic_text_file, check_output_file, clean_leftovers
from whispertune.text import NormalizeOptions, for_cer
from whispertune.text import normalize as normalize_text

logger = logging.getLogger(__name__)

# Packing: silence between packed clips, and the most audio (gaps included) in one window.
# 2 s measured best on AISHELL (0.5 s: clips ran together, CER +11 points; 1 s: +2.8); the
# limit leaves room at the window's end, where Whisper tends to stop early.
PACK_GAP = 2.0
PACK_LIMIT = 28.0


@dataclass
class EvaluateOptions:
    manifest: Path = field(metadata={"help": "JSONL manifest to score (audio + reference text)"})
    load: ModelOptions = field(default_factory=ModelOptions)
    metric: str = field(
        default="auto",
        metadata={
            "help": "cer, wer, or auto (CER for zh/ja/ko/th..., else WER)",
            "choices": ["auto", "cer", "wer"],
        },
    )
    output: Path | None = field(
        default=None,
        metadata={"help": "write per-utterance results (ref, hyp, errors) as JSONL, worst first"},
    )
    limit: int | None = field(default=None, metadata={"help": "score only the first N clips"})
    pack: bool = field(
        default=False,
        metadata={
            "help": "decode several short clips of the same language in one 30 s window "
            f"({PACK_GAP:g} s of silence between them) and split the text back by timestamps: "
            "about 2x faster on CPU, where the encoder's fixed 30 s window is most of the "
            "cost. It changes the results (each clip is decoded with its neighbours as "
            "context): compare runs with the same setting"
        },
    )
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    normalize: NormalizeOptions = field(default_factory=NormalizeOptions)


class ReportNotWritten(UserError):
    """The evaluation ran but ``--output`` could not be written (an OS error): the report is
    attached, so the figures minutes of decoding produced are still printed or returned."""

    def __init__(self, message: str, report: EvaluationReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class UtteranceResult:
    line: int
    audio: str
    ref: str
    hyp: str
    ref_norm: str
    hyp_norm: str
    errors: int
    ref_len: int
    language: str | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.ref_len)


@dataclass
class EvaluationReport:
    metric: str
    error_rate: float
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int
    clips: int
    audio_seconds: float
    wall_seconds: float
    model: str
    backend: str
    utterances: list[UtteranceResult] = field(default_factory=list, repr=False)

    @property
    def clips_per_second(self) -> float:
        return self.clips / max(self.wall_seconds, 1e-9)

    @property
    def rtf(self) -> float:
        return self.wall_seconds / max(self.audio_seconds, 1e-9)

    def summary(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "utterances"}
        d["clips_per_second"] = round(self.clips_per_second, 3)
        d["rtf"] = round(self.rtf, 4)
        return d


def _units(text: str, metric: str) -> str | list[str]:
    return for_cer(text) if metric == "cer" else text.split()


def score_pairs(
    refs: list[str], hyps: list[str], metric: str
) -> tuple[int, int, int, int, list[int]]:
    """(substitutions, deletions, insertions, reference length, per-pair errors) via jiwer."""
    import jiwer

    subs = dels = ins = ref_len = 0
    per = []
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = _units(ref, metric), _units(hyp, metric)
        n = len(r)
        if n == 0:
            e = (0, 0, len(h))
        else:
            if metric == "cer":
                out = jiwer.process_characters(r, h or "")
            else:
                out = jiwer.process_words(" ".join(r), " ".join(h))
            e = (out.substitutions, out.deletions, out.insertions)
        subs, dels, ins, ref_len = subs + e[0], dels + e[1], ins + e[2], ref_len + n
        per.append(sum(e))
    return subs, dels, ins, ref_len, per


def choose_metric(metric: str, samples: list[Sample], language: str | None) -> str:
    """``metric`` itself, or for "auto" CER when every language of the data (``language``, else
    the samples' own) is written without spaces (zh, ja, th, ...), WER otherwise."""
    if metric != "auto":
        return metric
    langs = [language] if language else [s.language for s in samples if s.language]
    codes = set()
    for lang in langs:
        try:
            codes.add(language_code(lang))
        except UserError:
            pass
    return "cer" if codes and codes <= NO_SPACE_LANGUAGES else "wer"


def evaluate(
    options: EvaluateOptions,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    *,
    transcriber: Transcriber | None = None,
) -> EvaluationReport:
    """Decode every clip of the manifest and score it; write ``options.output`` if given.

    ``transcriber``: an already loaded model (``whispertune.api.Model`` keeps one), so that a
    server, UI or benchmark scores many manifests without reloading; without one the model of
    ``options.load`` is loaded here and closed at the end. ``progress`` gets one
    ProgressEvent (stage "evaluate", clips) per batch; a set ``cancel`` raises Cancelled at the
    next batch and nothing is written. ``options.output`` is checked before the model is
    loaded (a folder, under a file, not writable: UserError); an OS error while writing it
    raises :class:`ReportNotWritten`, which carries the report.
    """
    if options.output is not None:
        check_output_file(options.output)
    samples = read_manifest(options.manifest)
    if options.limit:
        samples = samples[: options.limit]
    if not samples:
        raise UserError(f"{options.manifest}: no samples to evaluate")
    own = transcriber is None
    if transcriber is None:
        check_cancel(cancel, "evaluation")
        transcriber = create_transcriber(options.load)
    try:
        report = evaluate_samples(
            transcriber,
            samples,
            decode=options.decode,
            normalize=options.normalize,
            metric=options.metric,
            pack=options.pack,
            progress=progress,
            cancel=cancel,
            source=str(options.manifest),
            model=options.load.model,
        )
    finally:
        if own:
            transcriber.close()
    if options.output is not None:
        try:
            write_utterances(report, options.output)
        except OSError as e:
            raise ReportNotWritten(
                f"--output {options.output}: the per-utterance results could not be written: {e}",
                report,
            ) from e
    return report


def evaluate_samples(
    transcriber: Transcriber,
    samples: list[Sample],
    *,
    decode: DecodeOptions | None = None,
    normalize: NormalizeOptions | None = None,
    metric: str = "auto",
    pack: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    source: str = "manifest",
    model: str = "",
) -> EvaluationReport:
    """Decode ``samples`` with a loaded ``transcriber`` and score them: the one evaluation that
    ``whispertune evaluate``, the facade and the trainer's validation all run.

    A sample's own language is used unless ``decode.language`` is set; clips with neither get
    their language detected. ``source`` names the manifest in errors (``source:line: ...``).
    """
    decode = decode or DecodeOptions()
    normalize_options = normalize or NormalizeOptions()
    decode = replace(decode, language=resolved_language(decode.language))
    metric = choose_metric(metric, samples, decode.language)
    english = metric == "wer"
    report_progress = Reporter(progress, "evaluate", total=len(samples), unit="clip")
    hyps: dict[int, Transcript] = {}
    audio_seconds = 0.0
    batch = max(1, decode.batch_size)
    start = time.perf_counter()

    def load(s: Sample):
        try:
            return load_audio(s.audio_path, s.start_time, s.end_time)
        except AudioError as e:
            raise UserError(f"{source}:{s.line}: {e}") from e

    def language_of(s: Sample) -> str | None:
        if decode.language:
            return None  # decode.language applies
        return s.language

    report_progress(0)
    if pack:
        audio_seconds = _decode_packed(
            samples, load, transcriber, decode, language_of, hyps, report_progress, cancel
        )
    else:
        # The next batch is handed to the backend before this one is done (two in flight):
        # a backend that spreads a batch over workers (ct2 on the CPU) otherwise idles a
        # core at the end of every batch, while the last clip finishes, and while the next
        # batch's audio loads.
        def collect(first: int, future: Future) -> None:
            for j, t in enumerate(future.result()):
                hyps[first + j] = t
            report_progress(min(first + batch, len(samples)))

        with ThreadPoolExecutor(2, thread_name_prefix="evaluate") as ahead:
            in_flight: deque[tuple[int, Future]] = deque()
            try:
                for i in range(0, len(samples), batch):
                    check_cancel(cancel, "evaluation")
                    chunk = samples[i : i + batch]
                    audios = [load(s) for s in chunk]
                    audio_seconds += sum(len(a) for a in audios) / SAMPLE_RATE
                    langs = [language_of(s) for s in chunk]
                    in_flight.append(
                        (i, ahead.submit(transcriber.transcribe_clips, audios, decode, langs))
                    )
                    if len(in_flight) == 2:
                        collect(*in_flight.popleft())
                while in_flight:
                    collect(*in_flight.popleft())
            except BaseException:
                for _, future in in_flight:
                    future.cancel()  # not started yet: dropped; a started one finishes
                raise
    wall = time.perf_counter() - start
    results: list[UtteranceResult] = []
    for k, s in enumerate(samples):
        t = hyps[k]
        results.append(
            UtteranceResult(
                line=s.line,
                audio=str(s.audio_path),
                ref=s.text,
                hyp=t.text,
                ref_norm=normalize_text(s.text, normalize_options, english=english),
                hyp_norm=normalize_text(t.text, normalize_options, english=english),
                errors=0,
                ref_len=0,
                language=t.language,
            )
        )
    subs, dels, ins, ref_len, per = score_pairs(
        [r.ref_norm for r in results], [r.hyp_norm for r in results], metric
    )
    for r, e in zip(results, per, strict=True):
        r.errors = e
        r.ref_len = len(_units(r.ref_norm, metric))
    error_rate = (subs + dels + ins) / max(1, ref_len)
    report_progress(len(samples), figures={metric: error_rate})
    return EvaluationReport(
        metric=metric,
        error_rate=error_rate,
        substitutions=subs,
        deletions=dels,
        insertions=ins,
        reference_length=ref_len,
        clips=len(results),
        audio_seconds=audio_seconds,
        wall_seconds=wall,
        model=model,
        backend=transcriber.name,
        utterances=results,
    )


@dataclass
class _Pack:
    """Clips laid end to end with silence between them, to be decoded as one window."""

    language: str
    items: list[tuple[int, float, float]] = field(default_factory=list)  # index, start, end
    parts: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    def fits(self, n_samples: int) -> bool:
        extra = (PACK_GAP if self.parts else 0.0) + n_samples / SAMPLE_RATE
        return self.seconds + extra <= PACK_LIMIT

    def add(self, index: int, audio: np.ndarray) -> None:
        if self.parts:
            self.parts.append(np.zeros(int(PACK_GAP * SAMPLE_RATE), dtype=np.float32))
            self.seconds += PACK_GAP
        start = self.seconds
        self.parts.append(audio)
        self.seconds += len(audio) / SAMPLE_RATE
        self.items.append((index, start, self.seconds))

    def audio(self) -> np.ndarray:
        return np.concatenate(self.parts)


def _split_pack(pack: _Pack, t: Transcript) -> dict[int, list[str]]:
    """Each timestamped segment goes to the clip it overlaps most (else the nearest)."""
    texts: dict[int, list[str]] = {i: [] for i, _, _ in pack.items}
    if t.silence:
        return texts
    for seg in t.segments:

        def score(item, seg=seg):
            _, start, end = item
            overlap = min(seg.end, end) - max(seg.start, start)
            mid = (seg.start + seg.end) / 2
            return overlap if overlap > 0 else -min(abs(mid - start), abs(mid - end))

        ranked = sorted(pack.items, key=score, reverse=True)
        if len(ranked) > 1 and score(ranked[1]) > 0.5:
            logger.debug("packed segment %r spans two clips", seg.text)
        texts[ranked[0][0]].append(seg.text.strip())
    return texts


def _decode_packed(
    samples: list[Sample],
    load: Callable[[Sample], np.ndarray],
    transcriber: Transcriber,
    decode: DecodeOptions,
    language_of: Callable[[Sample], str | None],
    hyps: dict[int, Transcript],
    progress: Reporter,
    cancel: threading.Event | None,
) -> float:
    """Evaluate with clips packed into 30 s windows; returns the seconds of audio.

    Why: on CPU the encoder's fixed 30 s window is most of the cost of a short clip, so a
    window holding five clips costs about what one clip does. Clips are packed in manifest
    order, per language; a clip whose language is unknown, or longer than a window, is decoded
    alone, and so is a packed clip that got no text (Whisper sometimes stops before the last
    clip of a window). Audio is loaded as packs fill, so memory stays bounded.
    """
    batch = max(1, decode.batch_size)
    open_packs: dict[str, _Pack] = {}
    ready: list[_Pack] = []
    alone: list[tuple[int, np.ndarray]] = []
    seconds = 0.0
    done = 0

    def flush() -> None:
        nonlocal done
        if ready:
            packs = list(ready)
            ready.clear()
            results = transcriber.transcribe_clips(
                [p.audio() for p in packs], decode, [p.language for p in packs], timestamps=True
            )
            for pack, t in zip(packs, results, strict=True):
                for index, texts in _split_pack(pack, t).items():
                    if texts:
                        text = join_texts(texts)
                        hyps[index] = Transcript(text=text, language=pack.language)
                        done += 1
                    else:
                        _, start, end = next(it for it in pack.items if it[0] == index)
                        audio = pack.audio()[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
                        alone.append((index, audio))
        while alone:
            todo = alone[:batch]
            del alone[:batch]
            langs = [language_of(samples[i]) for i, _ in todo]
            results = transcriber.transcribe_clips([a for _, a in todo], decode, langs)
            for (index, _), t in zip(todo, results, strict=True):
                hyps[index] = t
                done += 1
        progress(done)

    default = language_code(decode.language) if decode.language else None
    for k, s in enumerate(samples):
        check_cancel(cancel, "evaluation")
        audio = load(s)
        seconds += len(audio) / SAMPLE_RATE
        lang = language_of(s)
        lang = language_code(lang) if lang else default
        if lang is None or len(audio) > PACK_LIMIT * SAMPLE_RATE:
            alone.append((k, audio))
        else:
            pack = open_packs.get(lang)
            if pack is not None and not pack.fits(len(audio)):
                ready.append(open_packs.pop(lang))
                pack = None
            if pack is None:
                pack = open_packs[lang] = _Pack(lang)
            pack.add(k, audio)
        if len(ready) >= batch or len(alone) >= batch:
            flush()
    ready.extend(open_packs.values())
    while ready or alone:
        todo = ready[batch:]
        del ready[batch:]
        flush()
        ready.extend(todo)
    return seconds


def write_utterances(report: EvaluationReport, path: Path) -> None:
    """Per-utterance JSONL, worst first, so the first lines are the ones worth listening to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path.parent, path.name)
    ranked = sorted(report.utterances, key=lambda r: (-r.error_rate, -r.errors, r.line))
    with atomic_text_file(path) as fh:
        for r in ranked:
            row = asdict(r)
            row["error_rate"] = round(r.error_rate, 4)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
