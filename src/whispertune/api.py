"""The library API every front end is built on: the CLI, the server, the web UI, the desktop
app and the Ray jobs call these, and nothing else, to decode, score, train and export.

A model is loaded once (:func:`load_model`, any source: ``builtin:base``, a transformers
directory, a ``whispertune train`` run's ``best/`` adapter, a CTranslate2 directory, a hub id)
and then used many times::

    import threading
    from whispertune import api

    with api.load_model("runs/x/best") as model:
        run = model.transcribe("talk.mp3", language="zh")
        for segment in run:                      # segments as they are decoded
            print(segment.start, segment.end, segment.text)
        report = model.evaluate("test.jsonl")    # no second load
        model.export("ct2", "deploy/ct2")

    result = api.train({"train": "train.jsonl", "output": "runs/x"},
                       progress=print, cancel=threading.Event())

The protocol is the same for every long call: ``progress`` receives
:class:`~whispertune.progress.ProgressEvent` (stage, done, total, unit, elapsed/ETA, figures such
as loss or CER, a message line) and ``cancel`` (a ``threading.Event``) makes the call raise
:class:`~whispertune.progress.Cancelled` at the next batch, step or tensor, with a state it
names: a streamed transcription keeps the segments already yielded (``"partial"``), an
evaluation or export leaves no output (``"removed"``), a training leaves a checkpoint that
``resume=True`` continues to the same weights as an uninterrupted run (``"resumable"``).

Threads: a :class:`Model`'s ``transcribe``, ``transcribe_clips`` and ``evaluate`` may be called
from several threads at once. With the ct2 backend the calls run concurrently (CTranslate2
queues them onto its workers; our per-call state is local); with the transformers backend they
are serialized by a lock in the backend, one decode at a time. For throughput across many
requests, batch clips into one ``transcribe_clips`` call (as the server's batcher does) rather
than adding threads. ``close`` (and leaving the ``with`` block) must wait until calls return.
``export`` only reads the model's files and may run beside decodes. :func:`train` runs one at a
time per process: for its duration it sets torch's thread count and random generators, and
restores them when it returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whispertune import options as _options
from whispertune.backends.base import DecodeOptions, Transcriber, Transcript
from whispertune.backends.options import ModelOptions
from whispertune.errors import UserError
from whispertune.evaluate import EvaluateOptions, EvaluationReport
from whispertune.progress import (
    Cancelled,
    ProgressCallback,
    ProgressEvent,
    Reporter,
    check_cancel,
)
from whispertune.transcribe import LongFormOptions, Transcription

if TYPE_CHECKING:
    from whispertune.train.config import TrainOptions
    from whispertune.train.loop import TrainResult

__all__ = [
    "Cancelled",
    "DecodeOptions",
    "EvaluateOptions",
    "EvaluationReport",
    "LongFormOptions",
    "Model",
    "ModelOptions",
    "ProgressCallback",
    "ProgressEvent",
    "Transcription",
    "export",
    "load_model",
    "merge",
    "train",
]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("ct2", "ggml")


def _with(cls: type, base: Any, overrides: dict[str, Any]) -> Any:
    """``base`` (an options dataclass or None) with ``overrides`` (flat option names) applied,
    checked as the CLI checks them (unknown names and bad choices are errors)."""
    values = _options.to_dict(base) if base is not None else {}
    values.update(overrides)
    return _options.build(cls, values, source="options")


class Model:
    """A loaded model: decode, score and export it without loading it again.

    Built by :func:`load_model`. ``transcriber`` is the backend object
    (:class:`whispertune.backends.base.Transcriber`) for callers that batch clips themselves.
    """

    def __init__(self, transcriber: Transcriber, options: ModelOptions) -> None:
        self.transcriber = transcriber
        self.options = options
        self._closed = False

    @property
    def name(self) -> str:
        """The model spec it was loaded from (``builtin:base``, a directory, a hub id)."""
        return self.options.model

    @property
    def multilingual(self) -> bool:
        return self.transcriber.multilingual

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        *,
        decode: DecodeOptions | None = None,
        long_form: LongFormOptions | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> Transcription:
        """Start transcribing a file of any length and format (or 16 kHz mono samples).

        Returns at once with a :class:`~whispertune.transcribe.Transcription`: iterate it for
        segments as they are decoded (``.info`` has the language once the first is out), or
        call ``.result()``. Options come as dataclasses or as flat keyword overrides with the
        CLI's names (``language="zh"``, ``beam_size=1``, ``vad=False``, ``word_timestamps=True``).
        Unreadable audio raises AudioError here, before any decoding.
        """
        from whispertune.transcribe import Pipeline

        self._check_open()
        decode_keys = _options.option_names(DecodeOptions)
        decode = _with(
            DecodeOptions, decode, {k: v for k, v in overrides.items() if k in decode_keys}
        )
        long_form = _with(
            LongFormOptions, long_form, {k: v for k, v in overrides.items() if k not in decode_keys}
        )
        pipeline = Pipeline(self.transcriber, decode, long_form, model=self.name)
        return pipeline.stream(audio, progress, cancel)

    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        decode: DecodeOptions | None = None,
        languages: Sequence[str | None] | None = None,
    ) -> list[Transcript]:
        """Clips of up to 30 s (16 kHz mono float32) decoded in one batched pass: the building
        block for a caller that gathers clips from many requests into one batch."""
        self._check_open()
        return self.transcriber.transcribe_clips(audios, decode or DecodeOptions(), languages)

    def evaluate(
        self,
        manifest: str | Path | EvaluateOptions,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        **overrides: Any,
    ) -> EvaluationReport:
        """CER/WER of this model on a manifest, as ``whispertune evaluate`` computes it.

        ``manifest`` is a path or full EvaluateOptions; keyword overrides use the CLI's option
        names (``limit=20``, ``language="zh"``, ``output="worst.jsonl"``). The options'
        model fields are ignored: this model is scored."""
        from whispertune.evaluate import evaluate

        self._check_open()
        if isinstance(manifest, EvaluateOptions):
            base, values = manifest, dict(overrides)
        else:
            base, values = None, {"manifest": manifest, **overrides}
        opts = _with(EvaluateOptions, base, values)
        opts = replace(opts, load=self.options)
        return evaluate(opts, progress, cancel, transcriber=self.transcriber)

    def export(
        self,
        format: str,
        output: str | Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        **kwargs: Any,
    ) -> Path:
        """Write this model for another runtime: ``"ct2"`` (a faster-whisper directory;
        ``quantization=``) or ``"ggml"`` (a whisper.cpp file; ``dtype=``, ``quantize=``).
        See :func:`export`."""
        return export(self.name, format, output, progress=progress, cancel=cancel, **kwargs)

    def close(self) -> None:
        """Free the runtime's memory and threads (call when no decode is running)."""
        if not self._closed:
            self._closed = True
            self.transcriber.close()

    def _check_open(self) -> None:
        if self._closed:
            raise UserError(f"{self.name}: the model was closed; load it again")

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, backend={self.transcriber.name!r})"


def load_model(
    model: str | Path | ModelOptions = "builtin:base",
    *,
    backend: str | None = None,
    compute_type: str | None = None,
    threads: int | None = None,
    device: str | None = None,
    device_index: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Model:
    """Load a model once, from any source the CLI's ``--model`` takes.

    With the ct2 backend (the default) a transformers checkpoint or adapter is merged and
    converted to CTranslate2 the first time and cached, which is where the time of a first
    load goes; ``progress`` gets a "load" event before and after it. ``device`` is "auto"
    (a GPU when the backend's runtime sees one), "cpu", "cuda" or "cuda:N".
    """
    if isinstance(model, ModelOptions):
        opts = model
    else:
        opts = ModelOptions(model=str(model))
    given = {
        "backend": backend,
        "compute_type": compute_type,
        "threads": threads,
        "device": device,
        "device_index": device_index,
    }
    opts = _with(ModelOptions, opts, {k: v for k, v in given.items() if v is not None})
    from whispertune.backends import create_transcriber

    report = Reporter(progress, "load", total=1, unit="model")
    check_cancel(cancel, "loading")
    report(0, message=f"loading {opts.model} ({opts.backend})")
    transcriber = create_transcriber(opts)
    report(1)
    return Model(transcriber, opts)


def export(
    model: str | Path,
    format: str,
    output: str | Path,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> Path:
    """Export a model source (no decoding model is loaded) to ``format``: "ct2" takes
    ``quantization`` and ``force``; "ggml" takes ``dtype``, ``quantize``, ``force`` and
    ``verify``. A cancelled or failed export leaves no output behind."""
    if format == "ct2":
        from whispertune.export.ct2 import export_ct2

        return export_ct2(str(model), output, progress=progress, cancel=cancel, **kwargs)
    if format == "ggml":
        from whispertune.export.ggml import export_ggml

        return export_ggml(str(model), output, progress=progress, cancel=cancel, **kwargs)
    raise UserError(f"unknown export format {format!r}; use one of {', '.join(EXPORT_FORMATS)}")


def merge(
    adapter: str | Path,
    output: str | Path,
    *,
    base: str | None = None,
    force: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Merge a LoRA/AdaLoRA adapter (e.g. ``runs/x/best``) into a plain transformers
    checkpoint at ``output``; a cancelled or failed merge leaves no output behind."""
    from whispertune.merge import merge_adapter

    return merge_adapter(adapter, output, base=base, force=force, progress=progress, cancel=cancel)


def train(
    options: TrainOptions | dict[str, Any],
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Fine-tune as ``whispertune train`` does; ``options`` is TrainOptions or a dict with the
    CLI's option names (``{"train": "train.jsonl", "output": "runs/x"}``).

    Progress stages: "encoder-cache" (clips, when encoder outputs are computed), "train"
    (steps; figures loss, lr, epoch, samples_per_s), "validate" (clips; its closing event has
    figures cer/wer and best, and a message line), "validate-best" (best/ as published,
    scored once at the end). A set ``cancel`` saves a checkpoint at the current step and raises
    Cancelled(state="resumable"); run again with ``resume=True`` to continue."""
    from whispertune.train import TrainOptions as _TrainOptions
    from whispertune.train import train as _train

    if not isinstance(options, _TrainOptions):
        options = _options.build(_TrainOptions, dict(options), source="options")
    return _train(options, progress, cancel)
