"""Check a manifest before training: every problem of every line, each with ``file:line``.

Training on a bad manifest fails late (a missing file in epoch 3) or silently (a 45 s clip is cut
to 30 s and its transcript no longer matches, a transcript longer than the decoder's 448
positions is truncated). :func:`validate_manifest` reads every line, collects all problems
instead of stopping at the first, and is cheap: durations come from the audio header
(:func:`measure_duration`) and a file is only decoded when its header says nothing. Whether a
file is complete is checked by reading its end only (:func:`whispertune.audio.truncation_problem`:
a WAV's declared size, an Ogg file's last page, the last 0.1 s of a FLAC or MP3), which finds a
copy cut short for the price of a few kB; ``--decode-audio`` decodes every file to its end,
which also finds damage in the middle, at the price of reading all the audio.

The helpers here (:func:`measure_duration`, :func:`load_tokenizer`, :func:`decoder_tokens`) are
shared with ``stats`` and the converters so that every data command measures the same way.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from whispertune.audio import (
    AudioError,
    AudioStream,
    PartialAudioError,
    audio_file_problem,
    partial_audio_allowed,
    truncation_problem,
)
from whispertune.data.manifest import ManifestError, Sample, parse_line, write_manifest
from whispertune.errors import UserError
from whispertune.languages import is_known_language

logger = logging.getLogger(__name__)

# Whisper's decoder has 448 positions (``max_target_positions``); a training target holds the
# prefix <|startoftranscript|><|lang|><|transcribe|><|notimestamps|> and a closing
# <|endoftext|> besides the text, and a timestamped target has two timestamp tokens a segment.
MAX_DECODER_TOKENS = 448
PREFIX_TOKENS = 4
SUFFIX_TOKENS = 1

# How far a manifest's numbers may be off the measured audio: opus/mp3 headers and the
# 2-decimal durations of common data sets differ from the decoded length by a few ms.
DURATION_SLACK = 0.1

ERROR = "error"
WARNING = "warning"
# Pseudo-label confidences that ``whispertune corpus transcribe`` writes beside each line (kept,
# not used by training; users filter on them): known, so not warned about as unknown keys.
CONFIDENCE_KEYS = frozenset({"avg_logprob", "no_speech_prob"})


def tokenizer_json_field() -> Any:
    """``--tokenizer-json`` of ``validate`` and ``stats``: both count decoder tokens with
    :func:`load_tokenizer`, so the option is defined (and described) once."""
    return field(
        default=None,
        metadata={
            "help": "tokenizer.json used to count the decoder tokens of each transcript "
            "(default: the tokenizer of builtin:base, the packaged whisper-base)",
            "metavar": "PATH",
        },
    )


@dataclass
class ValidateOptions:
    """Options of ``whispertune data validate``."""

    manifest: Path = field(metadata={"positional": True, "help": "the JSONL manifest to check"})
    max_duration: float = field(
        default=30.0,
        metadata={
            "help": "longest clip in seconds that is not an error; Whisper trains on 30 s "
            "windows and cuts anything longer",
            "metavar": "SECONDS",
        },
    )
    tokenizer_json: Path | None = tokenizer_json_field()
    check_tokens: bool = field(
        default=True,
        metadata={
            "help": f"check that each transcript fits the decoder ({MAX_DECODER_TOKENS} tokens "
            "including the prefix tokens); --no-check-tokens skips loading a tokenizer"
        },
    )
    fix_durations: Path | None = field(
        default=None,
        metadata={
            "help": "write a copy of the manifest with the measured durations to this file "
            "(the input is never edited; lines that cannot be parsed are left out)",
            "metavar": "OUT",
        },
    )
    force: bool = field(
        default=False,
        metadata={"help": "let --fix-durations overwrite an existing OUT"},
    )
    decode_audio: bool = field(
        default=False,
        metadata={
            "help": "decode every audio file to its end: also finds damage in the middle of a "
            "file and files only FFmpeg reads (m4a, webm) that end early, at the price of "
            "reading all the audio (seconds per hour of FLAC, more for compressed formats). "
            "Without it only each file's header and end are read, which finds files cut short "
            "(WAV, FLAC, MP3, Ogg/Opus) for a few kB each"
        },
    )


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one manifest line (``line`` 0 for the manifest as a whole)."""

    file: str
    line: int
    severity: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


@dataclass
class ValidationReport:
    """What :func:`validate_manifest` found; ``ok`` is False when there is any error."""

    manifest: Path
    lines: int = 0
    samples: int = 0
    problems: list[Problem] = field(default_factory=list)
    fixed_path: Path | None = None
    fixed_samples: int = 0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        def n(count: int, word: str) -> str:
            return f"{count} {word}{'' if count == 1 else 's'}"

        return (
            f"{self.manifest}: {n(self.lines, 'line')}, {n(len(self.errors), 'error')}, "
            f"{n(len(self.warnings), 'warning')}"
        )


# --- shared helpers -------------------------------------------------------------------------


def measure_duration(path: Path) -> float:
    """Length of an audio file in seconds; AudioError says why it cannot be used.

    The header (soundfile) is enough for WAV/FLAC/Ogg/MP3; only a file libsndfile cannot open
    (m4a, webm, odd WAVs) or whose header has no length is decoded with PyAV.
    """
    import soundfile as sf

    problem = audio_file_problem(path)
    if problem is not None:  # the caller names the path after the reason
        raise AudioError(problem)
    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # libsndfile raises for every format it does not know
        pass
    from whispertune.audio import SAMPLE_RATE, load_audio

    try:
        samples = len(load_audio(path))
    except AudioError as e:
        # load_audio's message repeats the path the caller already names; PyAV's errors are
        # OSErrors whose strerror is the short reason.
        cause = e.__cause__
        if cause is None:  # our own reason (cut short): it reads on its own
            raise AudioError(str(e).removeprefix(f"{path}: ")) from e
        reason = getattr(cause, "strerror", None) or str(cause).split(": ", 1)[-1]
        raise AudioError(f"audio cannot be decoded ({reason})") from e
    if samples == 0:
        raise AudioError("audio has no samples (0 s)")
    return samples / SAMPLE_RATE


@functools.lru_cache(maxsize=4)
def _tokenizer_from_file(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def load_tokenizer(path: Path | None = None, required: bool = False) -> Any | None:
    """A ``tokenizers.Tokenizer`` from ``path``, else the built-in whisper-base one.

    Without an explicit path a missing built-in model only disables token counting (logged),
    because the other checks are still worth running; an explicit bad path is an error.
    """
    if path is not None:
        if not Path(path).is_file():
            raise UserError(f"{path}: tokenizer.json not found")
        try:
            return _tokenizer_from_file(str(path))
        except Exception as e:
            raise UserError(f"{path}: not a tokenizer.json ({e})") from e
    from whispertune.models.builtin import builtin_tokenizer_file

    try:
        default = builtin_tokenizer_file()
        return _tokenizer_from_file(str(default))
    except Exception as e:
        if required:
            raise UserError(f"cannot load the built-in tokenizer: {e}") from e
        logger.warning("token counts skipped: cannot load the built-in tokenizer (%s)", e)
        return None


def text_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of a transcript, without any special token."""
    if not text:
        return 0
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def decoder_tokens(tokenizer: Any, sample: Sample) -> int:
    """Decoder positions a training target for ``sample`` takes, special tokens included."""
    if sample.sentences:
        # Timestamped target: <|0.00|> text <|1.50|> per segment.
        body = sum(text_tokens(tokenizer, s.text) + 2 for s in sample.sentences)
    else:
        body = text_tokens(tokenizer, sample.text)
    return PREFIX_TOKENS + body + SUFFIX_TOKENS


def sample_span(sample: Sample, file_duration: float) -> float:
    """Seconds of audio a sample uses: its start_time..end_time cut, else the whole file."""
    start = sample.start_time or 0.0
    end = sample.end_time if sample.end_time is not None else file_duration
    return max(0.0, min(end, file_duration) - start)


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f}".rstrip("0").rstrip(".") if math.isfinite(seconds) else str(seconds)


# --- the checks -----------------------------------------------------------------------------


class _Collector:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def error(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, ERROR, message))

    def warning(self, line: int, message: str) -> None:
        self.problems.append(Problem(self.file, line, WARNING, message))


def _check_complete(path: Path, decode: bool, out: _Collector, line: int) -> bool:
    """Whether the file ends where its header says (cheaply, or by decoding it all with
    ``decode``). A file that does not is an error, a warning under --allow-partial-audio (the
    other commands then use the part that decodes); False when it cannot be used at all."""
    problem = truncation_problem(path)
    if problem is None and decode:
        try:
            for _ in AudioStream(path, block_seconds=60.0, allow_partial=False):
                pass
        except PartialAudioError as e:
            problem = str(e).removeprefix(f"{path}: ").split("; --allow-partial-audio")[0]
        except AudioError as e:
            out.error(line, f"{str(e).removeprefix(f'{path}: ')}: {path}")
            return False
    if problem is None:
        return True
    if partial_audio_allowed():
        out.warning(line, f"audio decodes only in part: {problem}: {path}")
    else:
        out.error(
            line,
            f"audio decodes only in part: {problem}: {path} (--allow-partial-audio accepts "
            "the part that decodes)",
        )
    return True


def _check_cut(sample: Sample, file_duration: float, out: _Collector, line: int) -> bool:
    """start_time/end_time inside the file and in order; False when the cut is unusable."""
    start, end = sample.start_time, sample.end_time
    good = True
    if start is not None and start < 0:
        out.error(line, f"audio.start_time {_fmt(start)} is negative")
        good = False
    if end is not None and end <= 0:
        out.error(line, f"audio.end_time {_fmt(end)} is not positive")
        good = False
    if start is not None and end is not None and end <= start:
        out.error(line, f"audio.end_time {_fmt(end)} is not after audio.start_time {_fmt(start)}")
        good = False
    if start is not None and start >= file_duration:
        out.error(
            line,
            f"audio.start_time {_fmt(start)} is beyond the end of the file "
            f"({_fmt(file_duration)} s)",
        )
        good = False
    if end is not None and end > file_duration + DURATION_SLACK:
        out.error(
            line,
            f"audio.end_time {_fmt(end)} is beyond the end of the file ({_fmt(file_duration)} s)",
        )
        good = False
    return good


def _check_sentences(sample: Sample, span: float | None, out: _Collector, line: int) -> None:
    previous_end = 0.0
    for i, seg in enumerate(sample.sentences):
        if seg.start < 0:
            out.error(line, f"sentences[{i}] starts at a negative time ({_fmt(seg.start)})")
        if seg.end <= seg.start:
            out.error(
                line,
                f"sentences[{i}] ends at {_fmt(seg.end)}, not after its start {_fmt(seg.start)}",
            )
        if i and seg.start < previous_end - 1e-6:
            out.error(
                line,
                f"sentences out of order: sentences[{i}] starts at {_fmt(seg.start)}, before "
                f"sentences[{i - 1}] ends ({_fmt(previous_end)})",
            )
        if span is not None and seg.end > span + DURATION_SLACK:
            out.error(
                line,
                f"sentences[{i}] ends at {_fmt(seg.end)}, beyond the end of the audio "
                f"({_fmt(span)} s)",
            )
        previous_end = max(previous_end, seg.end)


def _check_sample(
    sample: Sample, options: ValidateOptions, tokenizer: Any | None, out: _Collector
) -> float | None:
    """Run every check on one parsed line; return the measured span (seconds) when known."""
    line = sample.line
    unknown = sorted(k for k in sample.extra if k not in CONFIDENCE_KEYS)
    if unknown:
        out.warning(
            line,
            f"unknown key(s) {', '.join(map(repr, unknown))} (kept, not used: the "
            "manifest's keys are audio, sentence, sentences, language, duration)",
        )
    if sample.language is not None and not is_known_language(sample.language):
        out.error(
            line,
            f"unknown language {sample.language!r} (use a Whisper language name or code such "
            "as Chinese, English, zh, en)",
        )
    if tokenizer is not None:
        count = decoder_tokens(tokenizer, sample)
        if count > MAX_DECODER_TOKENS:
            out.error(
                line,
                f"text too long for the decoder: {count} tokens including "
                f"{PREFIX_TOKENS + SUFFIX_TOKENS} special tokens, at most {MAX_DECODER_TOKENS}",
            )
    if sample.duration is not None and sample.duration <= 0:
        out.error(line, f"duration {_fmt(sample.duration)} is not positive")

    try:
        file_duration = measure_duration(sample.audio_path)
    except AudioError as e:
        out.error(line, f"{e}: {sample.audio_path}")
        _check_sentences(sample, None, out, line)
        return None
    if not _check_complete(sample.audio_path, options.decode_audio, out, line):
        _check_sentences(sample, None, out, line)
        return None

    if not _check_cut(sample, file_duration, out, line):
        _check_sentences(sample, None, out, line)
        return None
    span = sample_span(sample, file_duration)
    if span <= 0:
        out.error(line, "the audio is 0 s long")
    if span > options.max_duration:
        out.error(
            line,
            f"audio is {_fmt(span)} s long, more than --max-duration {_fmt(options.max_duration)} "
            "s (Whisper cuts longer input, so the end of the transcript would be unheard)",
        )
    if sample.duration is not None and sample.duration > 0:
        if abs(sample.duration - span) > DURATION_SLACK:
            out.warning(
                line,
                f"duration {_fmt(sample.duration)} disagrees with the audio ({_fmt(span)} s); "
                "--fix-durations OUT writes a corrected copy",
            )
    _check_sentences(sample, span, out, line)
    return span


def _check_duplicate(
    sample: Sample,
    seen: dict[tuple[str, float | None, float | None], tuple[int, str]],
    out: _Collector,
) -> None:
    """Warn when a line uses the same audio (file and cut) as an earlier one: a copy-paste or a
    concatenation of overlapping manifests, which trains (and scores) that clip twice, or
    twice with different transcripts. A warning, not an error: repeating a clip on purpose
    is a (crude) way of weighting it."""
    key = (os.path.normpath(sample.audio_path), sample.start_time or 0.0, sample.end_time)
    text = sample.text
    if key not in seen:
        seen[key] = (sample.line, text)
        return
    first, first_text = seen[key]
    if text == first_text:
        out.warning(
            sample.line,
            f"duplicate of line {first} (same audio and transcript): the clip counts twice",
        )
    else:
        out.warning(
            sample.line,
            f"same audio as line {first} with another transcript: one of them is wrong",
        )


def _read_lines(path: Path, out: _Collector) -> list[tuple[int, str]]:
    """Non-blank lines; a line that is not UTF-8 is a problem of that line, not the end."""
    lines = []
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e.strerror})") from e
    with fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                out.error(number, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            if text.strip():
                lines.append((number, text))
    return lines


def _check_output(path: Path, manifest: Path, force: bool) -> None:
    if path.resolve() == manifest.resolve():
        raise UserError(f"{path}: --fix-durations must not be the input manifest")
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")


def validate_manifest(path: str | Path, options: ValidateOptions | None = None) -> ValidationReport:
    """Check every line of a manifest and collect all problems.

    Raises UserError only when the manifest itself cannot be read or the --fix-durations
    output is not allowed; everything wrong inside the manifest is a Problem of the report.
    """
    path = Path(path)
    options = options or ValidateOptions(manifest=path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    if options.fix_durations is not None:
        _check_output(Path(options.fix_durations), path, options.force)
    tokenizer = None
    if options.check_tokens:
        tokenizer = load_tokenizer(options.tokenizer_json)

    out = _Collector(str(path))
    report = ValidationReport(manifest=path)
    lines = _read_lines(path, out)
    report.lines = len(lines)
    base = path.resolve().parent
    fixed: list[Sample] = []
    seen: dict[tuple[str, float | None, float | None], tuple[int, str]] = {}
    for number, text in tqdm(lines, desc="checking", unit="line", disable=None, leave=False):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            out.error(number, f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            out.error(number, f"expected a JSON object, got {type(obj).__name__}")
            continue
        try:
            sample = parse_line(obj, base, "", number)
        except ManifestError as e:
            out.error(number, str(e).removeprefix(": "))
            continue
        report.samples += 1
        _check_duplicate(sample, seen, out)
        span = _check_sample(sample, options, tokenizer, out)
        if span is not None and span > 0:
            sample.duration = round(span, 2)
        fixed.append(sample)
    if not lines and not out.problems:
        out.warning(0, "manifest has no samples")
    report.problems = sorted(out.problems, key=lambda p: p.line)

    if options.fix_durations is not None:
        left_out = report.lines - len(fixed)
        report.fixed_path = write_manifest(fixed, options.fix_durations, force=options.force)
        report.fixed_samples = len(fixed)
        logger.info(
            "wrote %d samples with measured durations to %s%s",
            len(fixed),
            report.fixed_path,
            f" ({left_out} unparseable lines left out)" if left_out else "",
        )
    return report
