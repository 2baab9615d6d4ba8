"""One progress event and one cancel protocol for every long call of the library.

Why one type: a front end (CLI bar, server, web UI, desktop app, Ray job) should handle
transcription, evaluation, training and export with the same code. Every long call takes
``progress: ProgressCallback | None`` and ``cancel: threading.Event | None``; it calls
``progress`` with a :class:`ProgressEvent` as work advances (``done`` never goes back within a
stage and never passes ``total``), and when ``cancel`` is set it stops at the next batch, step
or tensor by raising :class:`Cancelled`, after leaving the state its docstring promises
(partial outputs removed, or a resumable checkpoint written).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from whispertune.errors import UserError


@dataclass(frozen=True)
class ProgressEvent:
    """Where a long call stands.

    ``stage`` names the part of the work ("transcribe", "evaluate", "encoder-cache", "train",
    "validate", "export", "merge", "verify", ...); ``done`` and ``total`` count ``unit``\\ s
    of that stage (``total`` is None when unknown, e.g. audio of unknown length);
    ``figures`` holds the stage's numbers (loss, lr, cer, ...); ``message`` is a line for a
    log or status bar.
    """

    stage: str
    done: float
    total: float | None = None
    unit: str = ""
    elapsed: float = 0.0
    message: str = ""
    figures: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    @property
    def eta(self) -> float | None:
        """Seconds left at the stage's average rate so far (None before there is a rate)."""
        if not self.total or self.done <= 0 or self.elapsed <= 0:
            return None
        return max(0.0, self.elapsed * (self.total - self.done) / self.done)


ProgressCallback = Callable[[ProgressEvent], None]


class Cancelled(UserError):
    """A long call stopped because its ``cancel`` event was set.

    ``state`` says what was left behind: "removed" (no partial output), "resumable" (a
    checkpoint to continue from: ``checkpoint``), or "partial" (what was yielded so far
    stands, e.g. segments of a streamed transcription)."""

    def __init__(self, message: str, *, state: str = "removed", checkpoint=None) -> None:
        super().__init__(message)
        self.state = state
        self.checkpoint = checkpoint


def check_cancel(cancel: threading.Event | None, what: str, state: str = "removed") -> None:
    """Raise :class:`Cancelled` when ``cancel`` is set (call at batch, step or tensor ends)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled", state=state)


class Reporter:
    """Emits the events of one stage: keeps ``elapsed`` and keeps ``done`` monotone and within
    ``total`` so callers need not (a rounding in a caller must never make a bar go back)."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        stage: str,
        total: float | None = None,
        unit: str = "",
    ) -> None:
        self.callback = callback
        self.stage = stage
        self.total = total
        self.unit = unit
        self.done = 0.0
        self._start = time.perf_counter()

    def __call__(
        self,
        done: float | None = None,
        total: float | None = None,
        *,
        message: str = "",
        figures: Mapping[str, float] | None = None,
    ) -> None:
        if total is not None:
            self.total = total
        if done is not None:
            self.done = max(self.done, float(done))
        if self.total is not None:
            self.done = min(self.done, float(self.total))
        if self.callback is None:
            return
        self.callback(
            ProgressEvent(
                stage=self.stage,
                done=self.done,
                total=self.total,
                unit=self.unit,
                elapsed=time.perf_counter() - self._start,
                message=message,
                figures=dict(figures or {}),
            )
        )
