"""Library progress events (:class:`whispertune.progress.ProgressEvent`) drawn as tqdm bars.

One bar per stage: when the stage changes, the old bar closes and a new one opens, so a
training shows "encoder cache" and then "training" and an export "writing tensors" then
"verifying". An event's ``message`` is written above the bar as a line; its ``figures`` are
shown after the bar (loss, lr, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from whispertune.progress import ProgressCallback, ProgressEvent

_SECONDS_FORMAT = "{l_bar}{bar}| {n:.0f}/{total_fmt} s audio [{elapsed}<{remaining}]"


class TqdmProgress:
    """A ProgressCallback that draws bars; ``labels`` maps stage names to bar titles."""

    def __init__(self, labels: dict[str, str] | None = None, quiet: bool = False) -> None:
        self.labels = labels or {}
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.stage: str | None = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if event.stage != self.stage or self.bar is None:
            self.close()
            self.stage = event.stage
            seconds = event.unit == "s"
            total = event.total
            if seconds and total is not None:
                total = round(total, 1)
            self.bar = tqdm(
                total=total,
                desc=self.labels.get(event.stage, event.stage),
                unit=event.unit or "it",
                dynamic_ncols=True,
                bar_format=_SECONDS_FORMAT if seconds else None,
            )
        bar = self.bar
        if event.total is not None and bar.total != event.total and event.unit != "s":
            bar.total = event.total
        done = round(event.done, 1) if event.unit == "s" else event.done
        if float(done).is_integer():
            done = int(done)  # "6/6 steps", not "6.0/6"
        if done > bar.n:
            bar.update(done - bar.n)
        if event.figures:
            bar.set_postfix(
                {k: _fmt(v) for k, v in event.figures.items() if isinstance(v, (int, float))},
                refresh=False,
            )
        if event.message:
            bar.write(event.message)

    def write(self, line: str) -> None:
        """A line above the bar (or plain, when there is none)."""
        tqdm.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return f"{value:.2e}" if abs(value) < 1e-3 and value != 0 else f"{value:.4g}"


@contextmanager
def progress_bar(desc: str, quiet: bool = False) -> Iterator[ProgressCallback]:
    """A progress callback for one command; ``desc`` titles its first (or only) stage."""
    bars = TqdmProgress(quiet=quiet)
    original = bars.__call__

    def callback(event: ProgressEvent) -> None:
        if bars.stage is None:
            bars.labels.setdefault(event.stage, desc)
        original(event)

    try:
        yield callback
    finally:
        bars.close()
