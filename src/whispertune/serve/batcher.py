"""Cross-request batching: a Transcriber that gathers the clips of concurrent callers into one
batched call of the real model.

Why a proxy and not a scheduler of its own: every request runs the library's ordinary
:class:`~whispertune.transcribe.Pipeline` (VAD, spans, timestamps, re-decoding of cut spans,
start snapping) over this object instead of over the model. Its ``transcribe_clips`` puts the
call's clips on a queue and waits; one worker thread takes the waiting calls that can share a
decode (the same options apart from each clip's language, the same timestamp flags), up to
``max_batch`` clips, and makes one ``transcribe_clips`` call of the real model for all of
them. So the speech spans of requests that arrive together share CTranslate2 batches, and each
request still gets exactly the text ``whispertune transcribe`` gives for the same options: a
clip's decode does not depend on the other clips of its batch (checked by the tests, and by
tests/serve/test_text.py against the Pipeline on the real model).

On a CPU the gain is mostly that a batch keeps every core busy: the ct2 backend splits a batch
over its workers, while one request's single span runs on one worker's cores. On a GPU a
batch also fills the device.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from whispertune.backends.base import DecodeOptions, Transcriber, Transcript
from whispertune.languages import language_code

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    """One caller's ``transcribe_clips`` call, waiting for its transcripts."""

    key: str
    audios: Sequence[np.ndarray]
    options: DecodeOptions
    languages: list[str | None]
    timestamps: bool
    word_timestamps: bool
    previous_tokens: Sequence[Sequence[int] | None] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Transcript] | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the batcher has done, for /health and the load benchmark."""

    calls: int = 0  # transcribe_clips calls of the real model
    clips: int = 0
    jobs: int = 0  # callers' calls served
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.clips / self.calls if self.calls else 0.0


class BatchingTranscriber:
    """``transcriber`` shared by many threads, with their concurrent calls decoded together.

    It implements the :class:`~whispertune.backends.base.Transcriber` interface by delegation
    rather than by subclassing: ``transcribe_clips`` is its own, every other attribute (name,
    languages, rescoring's scoring calls...) is the real model's, so the proxy keeps working
    whatever else the interface grows.

    ``max_batch``: most clips in one call of the real model (a caller's own call is never
    split, so a batch can exceed it by one call's clips). ``max_wait``: seconds an idle worker
    waits for companions before decoding a lone call; ``fill_wait``: seconds it waits for as
    many callers as the previous batch served (see ``_take``). While the model is busy, calls
    gather on their own, so the waits only cost anything when it would otherwise idle.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        max_batch: int = 8,
        max_wait: float = 0.01,
        fill_wait: float = 0.2,
    ) -> None:
        self.real = transcriber
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.fill_wait = max(0.0, fill_wait)
        self._last_demand = 1
        self.stats = BatchStats()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(
            target=self._run, name="whispertune-batcher", daemon=True
        )
        self._worker.start()

    # -- the Transcriber interface ---------------------------------------------------------

    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
        *,
        timestamps: bool = False,
        word_timestamps: bool = False,
        previous_tokens: Sequence[Sequence[int] | None] | None = None,
        on_clip_done: Callable[[int], None] | None = None,
    ) -> list[Transcript]:
        """As the real model's ``transcribe_clips``, decoded in a batch with the concurrent
        calls that can share it. Blocks until this call's transcripts are ready."""
        if not audios:
            return []
        # Each clip's language, checked here: an unknown language fails this call alone,
        # never the batch it would have joined.
        if languages is not None and len(languages) != len(audios):
            raise ValueError(f"{len(languages)} languages for {len(audios)} clips")
        default = language_code(options.language) if options.language else None
        langs = [
            language_code(lang) if lang else default
            for lang in (languages or [None] * len(audios))
        ]
        job = _Job(
            key=self._key(options, timestamps, word_timestamps, previous_tokens),
            audios=list(audios),
            options=options,
            languages=langs,
            timestamps=timestamps,
            word_timestamps=word_timestamps,
            previous_tokens=previous_tokens,
        )
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(job)
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        if on_clip_done is not None:
            for i in range(len(job.result)):
                on_clip_done(i)
        return job.result

    def __getattr__(self, name: str) -> Any:
        # Anything else the Pipeline may ask of a transcriber is the real model's.
        if name in ("real", "__setstate__"):
            raise AttributeError(name)
        return getattr(self.real, name)

    def close(self) -> None:
        """Stop the worker once the queue is empty (the real model stays open: its owner
        closes it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=60)

    # -- grouping ----------------------------------------------------------------------------

    @staticmethod
    def _key(
        options: DecodeOptions,
        timestamps: bool,
        word_timestamps: bool,
        previous_tokens: Sequence[Sequence[int] | None] | None,
    ) -> str:
        """Calls with equal keys can be decoded in one call: everything but the clips'
        languages is the same. Calls that give previous text with a token limit are kept
        apart, because the backend sizes the output limit by the batch's longest prompt."""
        shared = replace(options, language=None)
        alone = ""
        if previous_tokens is not None and options.max_new_tokens is not None:
            alone = f"/alone:{id(previous_tokens)}"
        return f"{shared!r}/ts={timestamps}/words={word_timestamps}{alone}"

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest waiting call and the calls behind it with the same key,
        up to ``max_batch`` clips. None once closed and drained.

        How long to wait for companions: up to ``max_wait`` when at least as many callers
        are queued as the last batch served (a lone client pays almost nothing), and up to
        ``fill_wait`` for that many callers otherwise. Why: when a batch
        ends, its callers' clients get their answers together and send their next requests
        over the next tens of milliseconds; decoding the first of them alone would run a
        batch of one (one core busy, measured) while the others queue behind it.
        """
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue[0]
            start = time.monotonic()
            while True:
                same = [j for j in self._queue if j.key == first.key]
                size = sum(len(j.audios) for j in same)
                enough = len(same) >= self._last_demand
                wait = self.max_wait if enough else max(self.max_wait, self.fill_wait)
                left = start + wait - time.monotonic()
                if size >= self.max_batch or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            batch: list[_Job] = []
            count = 0
            for job in list(self._queue):
                if job.key != first.key:
                    continue
                if batch and count + len(job.audios) > self.max_batch:
                    break
                batch.append(job)
                count += len(job.audios)
            # callers that were waiting (each has one call at a time): whom to wait for next
            self._last_demand = max(1, len(batch))
            for job in batch:
                self._queue.remove(job)
            return batch

    # -- the worker --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._decode(batch)
            except BaseException as e:  # a batch's failure: retry its calls one by one
                if len(batch) == 1:
                    batch[0].error = e
                    batch[0].done.set()
                    continue
                logger.warning("a batch of %d calls failed (%s); decoding them one by one",
                               len(batch), e)
                for job in batch:
                    try:
                        self._decode([job])
                    except BaseException as e2:
                        job.error = e2
                        job.done.set()

    def _decode(self, batch: list[_Job]) -> None:
        first = batch[0]
        audios = [a for job in batch for a in job.audios]
        languages = [lang for job in batch for lang in job.languages]
        previous: list[Sequence[int] | None] | None = None
        if any(job.previous_tokens is not None for job in batch):
            previous = list(
                itertools.chain.from_iterable(
                    job.previous_tokens if job.previous_tokens is not None
                    else [None] * len(job.audios)
                    for job in batch
                )
            )
        out = self.real.transcribe_clips(
            audios,
            replace(first.options, language=None),
            languages,
            timestamps=first.timestamps,
            word_timestamps=first.word_timestamps,
            previous_tokens=previous,
        )
        self.stats.calls += 1
        self.stats.clips += len(audios)
        self.stats.jobs += len(batch)
        self.stats.largest = max(self.stats.largest, len(audios))
        start = 0
        for job in batch:
            job.result = out[start : start + len(job.audios)]
            start += len(job.audios)
            job.done.set()
