"""The batcher's gathering rules, with a deterministic transcriber that records its calls
(the batcher is under test; what it calls is a stand-in that answers per clip)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from whispertune.backends.base import DecodeOptions, Transcript
from whispertune.errors import UserError
from whispertune.serve.batcher import BatchingTranscriber


class Recording:
    """Answers each clip with its first sample's value and its language; records every call
    (clip count, options, flags); a call can be made to wait until released, so that the
    test controls what is queued behind it; a clip of value -1 makes its call fail."""

    name = "recording"
    multilingual = True
    supports_word_timestamps = True

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def transcribe_clips(self, audios, options, languages=None, *, timestamps=False,
                         word_timestamps=False, previous_tokens=None, on_clip_done=None):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append({"n": len(audios), "options": options, "languages": list(languages),
                           "timestamps": timestamps, "previous": previous_tokens})
        if any(float(a[0]) == -1 for a in audios):
            raise RuntimeError("a bad clip")
        return [Transcript(text=f"{a[0]:g}/{lang}", language=lang)
                for a, lang in zip(audios, languages, strict=True)]

    def encode_text(self, text):
        return [len(text)]


def clip(value: float) -> np.ndarray:
    return np.full(160, value, dtype=np.float32)


def call_in_thread(batcher, results, key, audios, options, **kw):
    def run():
        try:
            results[key] = batcher.transcribe_clips(audios, options, **kw)
        except Exception as e:  # kept for the assertion
            results[key] = e

    t = threading.Thread(target=run)
    t.start()
    return t


def held(real: Recording, batcher: BatchingTranscriber, results: dict) -> threading.Thread:
    """A first call that holds the worker (inside the real model) until the gate opens."""
    real.gate.clear()
    real.entered.clear()
    t = call_in_thread(batcher, results, "first", [clip(0)], DecodeOptions())
    assert real.entered.wait(5)
    return t


def test_concurrent_calls_share_one_decode_and_get_their_own_transcripts():
    real = Recording()
    batcher = BatchingTranscriber(real, max_batch=8, max_wait=0.01)
    results: dict = {}
    first = held(real, batcher, results)
    zh = DecodeOptions(language="zh")
    threads = [
        call_in_thread(batcher, results, "a", [clip(1), clip(2)], zh, timestamps=True),
        call_in_thread(batcher, results, "b", [clip(3)], DecodeOptions(language="en"),
                       timestamps=True),
        call_in_thread(batcher, results, "c", [clip(4)], zh, languages=["ja"],
                       timestamps=True),
    ]
    time.sleep(0.2)  # all three queued behind the held call
    real.gate.set()
    for t in [first, *threads]:
        t.join(10)
    batcher.close()
    # the three calls differ only in language: one decode of 4 clips, languages per clip
    assert [c["n"] for c in real.calls] == [1, 4]
    # (the threads queue in any order; each clip keeps its own language)
    assert sorted(real.calls[1]["languages"]) == ["en", "ja", "zh", "zh"]
    assert real.calls[1]["options"].language is None
    assert [t.text for t in results["a"]] == ["1/zh", "2/zh"]
    assert [t.text for t in results["b"]] == ["3/en"]
    assert [t.text for t in results["c"]] == ["4/ja"]
    assert batcher.stats.largest == 4 and batcher.stats.jobs == 4


def test_calls_that_cannot_share_a_decode_are_kept_apart_and_max_batch_holds():
    real = Recording()
    batcher = BatchingTranscriber(real, max_batch=3, max_wait=0.01)
    results: dict = {}
    first = held(real, batcher, results)
    opts = DecodeOptions()
    threads = [
        call_in_thread(batcher, results, "ts1", [clip(1), clip(2)], opts, timestamps=True),
        call_in_thread(batcher, results, "plain", [clip(3)], opts, timestamps=False),
        call_in_thread(batcher, results, "beam1", [clip(4)], replace(opts, beam_size=1),
                       timestamps=True),
        call_in_thread(batcher, results, "ts2", [clip(5), clip(6)], opts, timestamps=True),
    ]
    time.sleep(0.2)
    real.gate.set()
    for t in [first, *threads]:
        t.join(10)
    batcher.close()
    sizes = sorted(c["n"] for c in real.calls[1:])
    # ts1 + ts2 would be 4 clips > max_batch 3: decoded apart, like the other keys
    assert sizes == [1, 1, 2, 2]
    assert sum(1 for c in real.calls if not c["timestamps"]) == 2  # the held call and "plain"
    assert all(c["options"].beam_size == 1 for c in real.calls if c["n"] == 1 and
               c["timestamps"])
    assert [t.text for t in results["ts2"]] == ["5/None", "6/None"]
    assert [t.text for t in results["beam1"]] == ["4/None"]


def test_a_failing_call_fails_alone():
    real = Recording()
    batcher = BatchingTranscriber(real, max_batch=8, max_wait=0.01)
    results: dict = {}
    first = held(real, batcher, results)
    threads = [
        call_in_thread(batcher, results, "good", [clip(1)], DecodeOptions()),
        call_in_thread(batcher, results, "bad", [clip(-1)], DecodeOptions()),
    ]
    time.sleep(0.2)
    real.gate.set()
    for t in [first, *threads]:
        t.join(10)
    batcher.close()
    assert [t.text for t in results["good"]] == ["1/None"]
    assert isinstance(results["bad"], RuntimeError)


def test_an_unknown_language_fails_before_it_joins_a_batch():
    real = Recording()
    batcher = BatchingTranscriber(real)
    with pytest.raises(UserError, match="unknown language"):
        batcher.transcribe_clips([clip(1)], DecodeOptions(language="klingon"))
    assert real.calls == []
    # everything else is the real model's
    assert batcher.name == "recording" and batcher.encode_text("abc") == [3]
    batcher.close()


def test_after_a_batch_of_n_callers_it_waits_briefly_for_n_again():
    """Clients answered together send again a few tens of ms apart: their next calls are
    decoded together, not the first alone and the rest behind it."""
    real = Recording()
    batcher = BatchingTranscriber(real, max_batch=8, max_wait=0.01, fill_wait=0.5)
    results: dict = {}
    first = held(real, batcher, results)
    threads = [call_in_thread(batcher, results, k, [clip(i)], DecodeOptions())
               for i, k in enumerate("abc")]
    time.sleep(0.2)
    real.gate.set()
    for t in [first, *threads]:
        t.join(10)
    threads = []
    for i, k in enumerate("def"):
        threads.append(call_in_thread(batcher, results, k, [clip(10 + i)], DecodeOptions()))
        time.sleep(0.05)
    for t in threads:
        t.join(10)
    lone = call_in_thread(batcher, results, "g", [clip(20)], DecodeOptions())
    lone.join(10)
    batcher.close()
    assert [c["n"] for c in real.calls] == [1, 3, 3, 1]
    assert [t.text for t in results["e"]] == ["11/None"]
