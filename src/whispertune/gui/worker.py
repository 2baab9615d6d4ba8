"""Decoding off the UI thread: a QObject in its own QThread that loads the model once and
streams one file at a time through ``Model.transcribe``, reporting by signals.

Rules that keep the window responsive and correct:

- the worker never touches a widget; it emits signals, which Qt queues onto the UI thread;
- a cancel is a ``threading.Event`` the UI sets directly (the worker's event loop is busy
  while it decodes, so a queued "cancel" message would arrive only after the file ends); the
  pipeline checks it before every batch and raises Cancelled;
- the GUI decodes in batches of :data:`GUI_BATCH_SIZE` spans, not the CLI's 4, so that a
  cancel waits for at most one small batch and the first segments appear sooner (on a CPU
  the ct2 backend runs two batch parts at once, so a batch of 2 keeps both busy; results are
  the same as the CLI's with ``--batch-size 2``);
- the model stays loaded between files and is loaded again only when its spec or backend
  changes; closing it happens on this thread, after the last decode returned.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from whispertune.audio import AudioError
from whispertune.errors import UserError
from whispertune.progress import Cancelled, ProgressEvent, check_cancel
from whispertune.transcribe import STREAM_FIRST_SPAN_SECONDS

logger = logging.getLogger(__name__)

GUI_BATCH_SIZE = 2


@dataclass(frozen=True)
class RunSettings:
    """The window's choices for one file, as the library's option names."""

    model: str
    backend: str
    language: str | None  # None: detect
    task: str = "transcribe"
    beam_size: int = 5
    vad: bool = True
    batch_size: int = GUI_BATCH_SIZE
    # a short first span: the first segments show after a short decode (as the server)
    first_span_seconds: float = STREAM_FIRST_SPAN_SECONDS

    def overrides(self) -> dict[str, Any]:
        """Flat options for ``Model.transcribe`` (the CLI's names)."""
        return {
            "language": self.language,
            "task": self.task,
            "beam_size": self.beam_size,
            "batch_size": self.batch_size,
            "vad": self.vad,
            "first_span_seconds": self.first_span_seconds,
        }


@dataclass(frozen=True)
class JobRequest:
    """One file to transcribe, as the UI hands it over (immutable: crosses threads)."""

    job_id: int
    path: Path
    settings: RunSettings
    cancel: threading.Event


class DecodeWorker(QObject):
    """Lives in the engine thread; ``run`` is invoked through a queued signal."""

    model_loading = Signal(str)  # spec
    model_loaded = Signal(str, str)  # spec, backend name
    started = Signal(int)  # job id
    language = Signal(int, str)  # job id, detected or given language
    segment = Signal(int, object)  # job id, whispertune.transcribe.Segment
    progress = Signal(int, float, float, float)  # job id, done s, total s (-1), eta s (-1)
    finished = Signal(int, object)  # job id, TranscriptionInfo
    cancelled = Signal(int)
    failed = Signal(int, str, str)  # job id, kind ("model", "audio", "error"), message

    def __init__(self) -> None:
        super().__init__()
        self._model = None
        self._key: tuple[str, str] | None = None

    @Slot(object)
    def run(self, request: JobRequest) -> None:
        """Transcribe one file, emitting segments and progress; never raises (a failure is
        a signal: the app must keep working whatever the file or model)."""
        job = request.job_id
        if request.cancel.is_set():
            self.cancelled.emit(job)
            return
        try:
            model = self._load(request.settings, request.cancel)
        except Cancelled:
            self.cancelled.emit(job)
            return
        except Exception as e:  # noqa: BLE001 - any load failure becomes the user's dialog
            logger.warning("cannot load %s: %s", request.settings.model, e, exc_info=True)
            self.failed.emit(job, "model", _message(e))
            return
        self.started.emit(job)

        def on_progress(event: ProgressEvent) -> None:
            if event.stage != "transcribe":
                return
            total = event.total if event.total else -1.0
            eta = event.eta if event.eta is not None else -1.0
            self.progress.emit(job, float(event.done), float(total), float(eta))

        try:
            run = model.transcribe(
                request.path,
                progress=on_progress,
                cancel=request.cancel,
                **request.settings.overrides(),
            )
            announced = False
            for seg in run:
                if not announced and run.info.language:
                    self.language.emit(job, run.info.language)
                    announced = True
                self.segment.emit(job, seg)
            # set during the last batch: still a cancel
            check_cancel(request.cancel, "transcription", state="partial")
        except Cancelled:
            self.cancelled.emit(job)
            return
        except AudioError as e:
            self.failed.emit(job, "audio", _message(e))
            return
        except UserError as e:
            self.failed.emit(job, "error", _message(e))
            return
        except Exception as e:  # noqa: BLE001 - reported, logged, and the app goes on
            logger.exception("transcription of %s failed", request.path)
            self.failed.emit(job, "error", _message(e))
            return
        self.finished.emit(job, run.info)

    def _load(self, settings: RunSettings, cancel: threading.Event):
        from whispertune import api

        key = (settings.model, settings.backend)
        if self._model is not None and self._key == key:
            return self._model
        self.close_model()
        self.model_loading.emit(settings.model)
        start = time.perf_counter()
        model = api.load_model(settings.model, backend=settings.backend, cancel=cancel)
        logger.info("loaded %s in %.1f s", settings.model, time.perf_counter() - start)
        self._model, self._key = model, key
        self.model_loaded.emit(settings.model, model.transcriber.name)
        return model

    @Slot()
    def close_model(self) -> None:
        """Free the model (only when no decode runs: called on this thread, or after it
        stopped)."""
        if self._model is not None:
            self._model.close()
        self._model, self._key = None, None


def _message(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, (UserError, AudioError)) or not text:
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}"
