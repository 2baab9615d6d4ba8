"""``whispertune corpus transcribe``: many audio files to a training manifest on Ray Data.

The job is Ray's batch-inference pattern: a dataset of file paths, ``map_batches`` with a
callable class run by a fixed pool of actors (``ActorPoolStrategy``); each actor loads the
model once (:func:`whispertune.api.load_model`) and transcribes its files one after the
other with :meth:`whispertune.api.Model.transcribe`, the same pipeline as ``whispertune
transcribe`` (VAD spans batched inside a file), so a file's text is the text the
single-process command gives for the same options. Parallelism is across files: one file per
actor at a time, ``--threads-per-actor`` cores each.

The driver streams the actors' rows as they finish, writes them to shards (see
:mod:`whispertune.corpus.output`), draws the progress and writes optional per-file SRT/JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from whispertune import options as _options
from whispertune.backends.base import DecodeOptions, join_texts
from whispertune.backends.options import ModelOptions
from whispertune.corpus.cluster import ClusterOptions, connect, plan_actors, runtime_env_vars
from whispertune.corpus.inputs import expand_inputs
from whispertune.corpus.models import ActorModel, local_model, prepare_model
from whispertune.corpus.output import (
    FORMATS,
    ShardWriter,
    check_settings,
    done_paths,
    write_manifest,
)
from whispertune.errors import UserError
from whispertune.progress import Cancelled, ProgressCallback, Reporter, check_cancel
from whispertune.staging import atomic_text_file
from whispertune.transcribe import LongFormOptions, Segment, TranscriptionResult

logger = logging.getLogger(__name__)

STAGE = "corpus-transcribe"
# Files per Ray block: small enough that rows stream back to the driver (and into shards)
# a few files at a time, large enough that task overhead stays small beside decoding.
FILES_PER_BLOCK = 8
# Test hook: the driver kills itself (SIGKILL, nothing cleaned up) after writing this many
# shards, to check that a re-run resumes exactly where the killed one stopped.
CRASH_ENV = "WHISPERTUNE_CORPUS_CRASH_AFTER_SHARDS"


@dataclass
class CorpusTranscribeOptions:
    """Options of ``whispertune corpus transcribe``."""

    inputs: list[str] = field(
        metadata={
            "positional": True,
            "help": "audio files, folders (searched recursively), globs ('data/**/*.flac') "
            "or JSONL manifests (their audio.path)",
        }
    )
    output: Path = field(
        metadata={"help": "folder of result shards; a re-run with it skips what is done"},
    )
    format: str = field(
        default="jsonl",
        metadata={
            "help": "shard format (manifest.jsonl is written in both)",
            "choices": list(FORMATS),
        },
    )
    srt: bool = field(default=False, metadata={"help": "also write files/<name>.srt per file"})
    json: bool = field(
        default=False, metadata={"help": "also write files/<name>.json (segments, words) per file"}
    )
    shard_size: int = field(
        default=100, metadata={"help": "files per shard (a shard is also written every minute)"}
    )
    load: ModelOptions = field(default_factory=ModelOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    long_form: LongFormOptions = field(default_factory=LongFormOptions)


@dataclass
class CorpusResult:
    """What a corpus job did: files decoded now, skipped as done before, failed now."""

    output: Path
    files: int
    skipped: int
    transcribed: int
    failed: int
    audio_seconds: float
    wall_seconds: float
    actors: int
    manifest: Path | None = None
    failed_before: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def audio_hours_per_hour(self) -> float:
        return self.audio_seconds / max(self.wall_seconds, 1e-9)


def _mean(values: list[float], weights: list[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    if not pairs:
        return None
    total = sum(w for _, w in pairs)
    if total <= 0:
        return sum(v for v, _ in pairs) / len(pairs)
    return sum(v * w for v, w in pairs) / total


def manifest_row(path: str, result: TranscriptionResult) -> dict[str, Any]:
    """A file's transcription as a manifest line (``whispertune.data.manifest``) plus the
    confidences a user filters pseudo-labels by.

    ``avg_logprob``: the file's mean log probability per token (segments weighted by their
    tokens, Whisper's per-segment figure over the file); ``no_speech_prob``: the highest of
    its segments (one likely non-speech segment is enough to look at a file). Both are null
    for a file without speech (empty ``sentence``: a no-speech sample). Each sentence keeps
    its own two figures too.
    """
    segs = result.segments
    info = result.info
    row: dict[str, Any] = {
        "audio": {"path": path},
        "sentence": result.text,
        "language": info.language,
        "sentences": training_sentences(segs, info.duration),
        "duration": round(info.duration or 0.0, 3),
        "avg_logprob": _mean([s.avg_logprob for s in segs], [len(s.tokens) for s in segs]),
        "no_speech_prob": max(
            (s.no_speech_prob for s in segs if s.no_speech_prob is not None), default=None
        ),
    }
    if row["language"] is None:
        del row["language"]
    return row


def training_sentences(segments: list[Segment], duration: float | None) -> list[dict[str, Any]]:
    """The segments as manifest ``sentences`` a trainer accepts: times in milliseconds, in
    order, inside the audio, each with a length.

    Why: Whisper sometimes ends a window with a zero-length segment (start == end, or equal
    once rounded); ``data validate`` rejects those and a timestamp target cannot hold them.
    Such a segment's text is joined to the segment before it (to the next when it is the
    first), so the sentences still read as the whole ``sentence``; empty texts are dropped.
    Each sentence keeps its own ``avg_logprob`` and ``no_speech_prob``.
    """
    limit = round(duration, 3) if duration else None
    out: list[dict[str, Any]] = []
    carry = ""  # text of leading zero-length segments, given to the first real one
    for seg in segments:
        text = seg.text.strip()
        if not text:
            continue
        start, end = round(seg.start, 3), round(seg.end, 3)
        if limit is not None:
            start, end = min(start, limit), min(end, limit)
        if out:
            start = max(start, out[-1]["end"])
        if end <= start:
            if out:
                out[-1]["text"] = join_texts([out[-1]["text"], text])
            else:
                carry = join_texts([carry, text])
            continue
        out.append(
            {
                "start": start,
                "end": end,
                "text": join_texts([carry, text]),
                "avg_logprob": seg.avg_logprob,
                "no_speech_prob": seg.no_speech_prob,
            }
        )
        carry = ""
    return out


class TranscribeActor:
    """The ``map_batches`` class: built once per actor (loads the model once), then called
    with batches of ``{"path": [...]}``; returns one output row per file, as JSON text (a
    transcription is nested and of any length: one string column keeps Arrow out of it)."""

    def __init__(
        self,
        model: ActorModel,
        decode: dict[str, Any],
        long_form: dict[str, Any],
        formats: list[str],
    ) -> None:
        from whispertune import api

        self.model = api.load_model(local_model(model))
        self.decode = _options.build(DecodeOptions, decode, source="options")
        self.long_form = _options.build(LongFormOptions, long_form, source="options")
        self.formats = formats

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        from whispertune.formats import render

        out = []
        for path in batch["path"]:
            path = str(path)
            start = time.perf_counter()
            try:
                result = self.model.transcribe(
                    path, decode=self.decode, long_form=self.long_form
                ).result()
            except Exception as e:  # noqa: BLE001 - any file's failure is recorded, not fatal
                logger.warning("%s: %s", path, e)
                out.append(json.dumps({"path": path, "error": f"{type(e).__name__}: {e}"}))
                continue
            item: dict[str, Any] = {
                "path": path,
                "row": manifest_row(path, result),
                "seconds": time.perf_counter() - start,
                "files": {fmt: render(result, fmt) for fmt in self.formats},
            }
            out.append(json.dumps(item, ensure_ascii=False))
        return {"result": out}


def settings_of(options: CorpusTranscribeOptions) -> dict[str, Any]:
    """What must not change between runs writing into one output (see check_settings)."""
    return {
        "command": "transcribe",
        "model": options.load.model,
        "backend": options.load.backend,
        "compute_type": options.load.compute_type,
        "decode": _options.to_dict(options.decode),
        "long_form": _options.to_dict(options.long_form),
        "format": options.format,
    }


def transcribe_corpus(
    options: CorpusTranscribeOptions,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> CorpusResult:
    """Transcribe every input file not done before into shards under ``options.output``.

    ``progress`` gets ``ProgressEvent(stage="corpus-transcribe", unit="file")`` with figures
    ``audio_h`` (hours decoded so far) and ``failed``. When ``cancel`` is set, or the driver is
    interrupted, the rows received so far are written as a shard before ``Cancelled`` (state
    "partial"): the re-run continues from there.
    """
    from whispertune.formats import output_stems
    from whispertune.languages import resolved_language

    started = time.perf_counter()
    if options.shard_size < 1:
        raise UserError("--shard-size must be at least 1")
    resolved_language(options.decode.language)  # unknown names fail before Ray starts
    files = expand_inputs(options.inputs)
    output = Path(options.output)
    check_settings(output, settings_of(options))
    done, failed_before = done_paths(output)
    todo = [p for p in files if str(p) not in done and str(p) not in failed_before]
    skipped = len(files) - len(todo)
    if skipped:
        logger.info("%d of %d files done in an earlier run: skipped", skipped, len(files))
    stems = dict(zip(files, output_stems(files), strict=True))
    formats = [f for f, on in (("srt", options.srt), ("json", options.json)) if on]
    result = CorpusResult(output, len(files), skipped, 0, 0, 0.0, 0.0, 0)
    result.failed_before = len(failed_before & set(map(str, files)))
    if todo:
        _run(options, todo, stems, formats, result, progress, cancel)
    done, failed = done_paths(output)
    if not set(map(str, files)) - done - failed:
        result.manifest = write_manifest(output, files)
    result.wall_seconds = time.perf_counter() - started
    return result


def _run(
    options: CorpusTranscribeOptions,
    todo: list[Path],
    stems: dict[Path, str],
    formats: list[str],
    result: CorpusResult,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> None:
    crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
    with connect(options.cluster.address) as ray:
        actors, threads = plan_actors(ray, options.cluster, options.load.threads)
        actors = min(actors, len(todo))
        result.actors = actors
        load = replace(options.load, threads=threads)
        model = prepare_model(load, ship=options.cluster.address is not None)
        items = [{"path": str(p)} for p in todo]
        blocks = max(math.ceil(len(items) / FILES_PER_BLOCK), min(len(items), 4 * actors))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        remote_args: dict[str, Any] = {}
        env = runtime_env_vars()
        if env:
            remote_args["runtime_env"] = {"env_vars": env}
        ds = ds.map_batches(
            TranscribeActor,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=threads,
            num_gpus=options.cluster.gpus_per_actor or None,
            fn_constructor_kwargs={
                "model": model,
                "decode": _options.to_dict(options.decode),
                "long_form": _options.to_dict(options.long_form),
                "formats": formats,
            },
            **remote_args,
        )
        writer = ShardWriter(
            output=Path(options.output), format=options.format, shard_size=options.shard_size
        )
        report = Reporter(progress, STAGE, total=len(todo), unit="file")
        report(
            0,
            message=f"{len(todo)} files on {actors} actor(s) x {threads} thread(s)"
            + (f" ({result.skipped} done before)" if result.skipped else ""),
        )
        files_dir = Path(options.output) / "files"
        n = 0
        try:
            for out in ds.iter_rows():
                item = json.loads(out["result"])
                n += 1
                if "error" in item:
                    result.failed += 1
                    result.errors.append({"path": item["path"], "error": item["error"]})
                    wrote = writer.add(error=result.errors[-1])
                else:
                    result.transcribed += 1
                    result.audio_seconds += item["row"]["duration"]
                    if item["files"]:
                        files_dir.mkdir(parents=True, exist_ok=True)
                        stem = stems[Path(item["path"])]
                        for fmt, text in item["files"].items():
                            with atomic_text_file(files_dir / f"{stem}.{fmt}") as fh:
                                fh.write(text)
                    wrote = writer.add(row=item["row"])
                report(
                    n,
                    figures={
                        "audio_h": round(result.audio_seconds / 3600, 3),
                        "failed": result.failed,
                    },
                )
                if wrote and crash_after and writer.shards >= crash_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                check_cancel(cancel, "corpus transcription", state="partial")
        except (Cancelled, KeyboardInterrupt):
            writer.flush()
            raise
        except Exception as e:
            writer.flush()
            raise UserError(f"corpus job failed: {e}") from e
        writer.flush()
