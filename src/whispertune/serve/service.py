"""The recognizer behind every route: one loaded model, the batcher, and the threads that run
each request's long-form pipeline.

Why threads: decoding never runs on the event loop (the seed's server decodes inside its
``async def`` handlers, so one long file stalls every other client, /health included). Each
request's :class:`~whispertune.transcribe.Pipeline` runs in a worker thread and hands its
segments to the event loop as they are decoded; with batching on, the workers' speech spans
meet in :class:`~whispertune.serve.batcher.BatchingTranscriber` and share decodes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from whispertune.api import Model
from whispertune.audio import AudioError
from whispertune.backends.base import DecodeOptions, Transcriber
from whispertune.errors import UserError
from whispertune.progress import Cancelled, ProgressEvent
from whispertune.serve.batcher import BatchingTranscriber
from whispertune.serve.options import ServeOptions
from whispertune.transcribe import LongFormOptions, Pipeline, Segment, TranscriptionInfo

logger = logging.getLogger(__name__)


class TooLong(UserError):
    """The audio is longer than ``--max-duration``."""


@dataclass
class RunStats:
    """One request's figures for the per-request log line."""

    admitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # a worker thread took it
    finished: float | None = None
    first_segment: float | None = None

    @property
    def decode_seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.perf_counter()) - self.started

    @property
    def queue_seconds(self) -> float:
        return (self.started or time.perf_counter()) - self.admitted


class Run:
    """One request's transcription: created on the event loop, decoded in a worker thread.

    ``await opened()`` waits until the audio was probed (raising AudioError, TooLong or
    UserError for a bad file, before any decoding); ``segments()`` then yields segments as
    they are decoded. ``cancel()`` (a client that went away) stops the pipeline at its next
    batch.
    """

    _END = object()

    def __init__(
        self, recognizer: Recognizer, pipeline: Pipeline, path: Path, name: str = "upload"
    ) -> None:
        self.recognizer = recognizer
        self.pipeline = pipeline
        self.path = path
        self.name = name  # the client's file name: error messages say it, never our path
        self.cancel_event = threading.Event()
        self.stats = RunStats()
        self.info: TranscriptionInfo | None = None
        self.segments_done: list[Segment] = []
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._future = recognizer.executor.submit(self._work)

    def cancel(self) -> None:
        self.cancel_event.set()

    # -- worker thread ---------------------------------------------------------------------

    def _post(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _set_opened(self, error: BaseException | None) -> None:
        def done() -> None:
            if self._opened.done():
                return
            if error is None:
                self._opened.set_result(None)
            else:
                self._opened.set_exception(error)

        self._loop.call_soon_threadsafe(done)

    def _work(self) -> None:
        self.stats.started = time.perf_counter()
        opened = False
        try:
            if self.cancel_event.is_set():
                raise Cancelled("transcription cancelled before it started", state="partial")
            limit = self.recognizer.options.max_duration
            transcription = self.pipeline.stream(self.path, self._progress, self.cancel_event)
            self.info = transcription.info
            duration = transcription.info.duration
            if duration is not None and duration > limit:
                raise TooLong(self._too_long(duration))
            opened = True
            self._set_opened(None)
            for seg in transcription:
                if seg.end > limit:
                    raise TooLong(self._too_long(seg.end))
                if self.stats.first_segment is None:
                    self.stats.first_segment = time.perf_counter()
                self.segments_done.append(seg)
                self._post(seg)
            self._post(self._END)
        except BaseException as e:  # every failure reaches the request, none kills the thread
            e = self._renamed(e)
            if not opened:
                self._set_opened(e)
            self._post(e)
        finally:
            self.stats.finished = time.perf_counter()

    def _renamed(self, error: BaseException) -> BaseException:
        """``error`` with the server's temp path in its message replaced by the client's
        file name (nothing a client reads names a server-side path)."""
        if isinstance(error, (AudioError, UserError)) and str(self.path) in str(error):
            return type(error)(str(error).replace(str(self.path), self.name))
        return error

    def _too_long(self, seconds: float) -> str:
        limit = self.recognizer.options.max_duration
        return (f"the audio is longer than this server accepts ({seconds:.1f} s > "
                f"{limit:g} s, --max-duration)")

    def _progress(self, *args: Any) -> None:
        """The pipeline's progress (audio seconds decoded): stops a file whose header did not
        give its length once it passes --max-duration."""
        done = args[0].done if args and isinstance(args[0], ProgressEvent) else args[0]
        if done is not None and float(done) > self.recognizer.options.max_duration:
            raise TooLong(self._too_long(float(done)))

    # -- event loop --------------------------------------------------------------------------

    async def opened(self) -> None:
        await self._opened

    async def segments(self) -> AsyncIterator[Segment]:
        """Segments as the worker decodes them; the pipeline's error is raised here."""
        while True:
            item = await self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def result(self) -> list[Segment]:
        return [seg async for seg in self.segments()]


class Recognizer:
    """The loaded model shared by all requests, with or without the batcher.

    ``options`` are the server's; each request passes the fields it sets as flat overrides
    of the decode and long-form defaults (``language``, ``task``, ``initial_prompt``,
    ``temperatures``, ``word_timestamps``).
    """

    def __init__(self, model: Model, options: ServeOptions) -> None:
        self.model = model
        self.options = options
        self.batcher: BatchingTranscriber | None = None
        if options.batching:
            self.batcher = BatchingTranscriber(
                model.transcriber,
                options.max_batch,
                options.batch_wait_ms / 1000,
                options.batch_fill_ms / 1000,
            )
            # Enough pipelines at once that their spans fill a batch and the next one
            # gathers while it decodes; the other admitted requests wait for a thread.
            workers = max(4, 2 * options.max_batch)
        else:
            workers = 1  # one request at a time: the seed's and whisper.cpp's way
        self.workers = workers
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="whispertune-request")
        self.admitted = 0
        self.max_queue = options.resolved_max_queue()

    @property
    def transcriber(self) -> Transcriber:
        """What the pipelines decode with: the batcher (duck-typed as a Transcriber) or the
        model itself."""
        if self.batcher is not None:
            return cast(Transcriber, self.batcher)
        return self.model.transcriber

    @property
    def name(self) -> str:
        return self.model.name

    def pipeline(self, **overrides: Any) -> Pipeline:
        """A pipeline with the server's defaults and this request's overrides; bad values
        (an unknown language, word times on a backend without them) raise UserError here."""
        decode_fields = set(DecodeOptions.__dataclass_fields__)
        decode = replace(
            self.options.decode, **{k: v for k, v in overrides.items() if k in decode_fields}
        )
        long_form = replace(
            self.options.long_form,
            **{k: v for k, v in overrides.items() if k in LongFormOptions.__dataclass_fields__},
        )
        unknown = set(overrides) - decode_fields - set(LongFormOptions.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return Pipeline(self.transcriber, decode, long_form, model=self.name)

    def start(self, path: Path, name: str = "upload", **overrides: Any) -> Run:
        """Start decoding ``path`` (must be called on the event loop); ``name`` is what
        error messages call the file."""
        return Run(self, self.pipeline(**overrides), path, name)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "ok",
            "model": self.name,
            "backend": self.model.transcriber.name,
            "batching": self.batcher is not None,
            "requests": {"admitted": self.admitted, "max_queue": self.max_queue},
        }
        if self.batcher is not None:
            s = self.batcher.stats
            out["batches"] = {"calls": s.calls, "clips": s.clips, "mean": round(s.mean_batch, 2),
                              "largest": s.largest}
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.batcher is not None:
            self.batcher.close()


__all__ = ["AudioError", "Recognizer", "Run", "TooLong"]
