"""The facade: one loaded model serves transcription, evaluation and export; one progress event
type and one cancel exception for every long call; the thread-safety the docstring claims.

A tiny random model (tests/tiny.py) runs the mechanics: its text is nonsense but deterministic,
which is all these tests compare.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.tiny import save_tiny_whisper
from whispertune import api
from whispertune.audio import load_audio
from whispertune.backends import DecodeOptions
from whispertune.backends.ct2 import CT2Transcriber
from whispertune.errors import UserError
from whispertune.options import ConfigError
from whispertune.progress import Cancelled, ProgressEvent

SAMPLE = "src/whispertune/samples/aishell_s0150/test.jsonl"
CLIPS = [f"src/whispertune/samples/aishell_s0150/clips/BAC009S0150W04{n}.opus"
         for n in (45, 46, 47, 48, 49, 50)]
FAST = {"language": "zh", "beam_size": 1, "max_new_tokens": 8, "temperatures": [0.0],
        "rescore": False}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path_factory.getbasetemp() / "api-cache"))


def _check_events(events: list[ProgressEvent], stage: str) -> list[ProgressEvent]:
    """The events of ``stage``: in order, within their total, ending at it."""
    mine = [e for e in events if e.stage == stage]
    assert mine, f"no {stage} events in {[e.stage for e in events]}"
    dones = [e.done for e in mine]
    assert dones == sorted(dones)
    assert all(e.total is None or 0 <= e.done <= e.total for e in mine)
    assert mine[-1].total is not None and mine[-1].done == mine[-1].total
    return mine


def test_one_load_serves_transcribe_evaluate_and_export(tiny_hf, tmp_path, cache, monkeypatch):
    loads = []
    original = CT2Transcriber.__init__

    def counting(self, *args, **kwargs):
        loads.append(args[0] if args else kwargs.get("model"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(CT2Transcriber, "__init__", counting)
    events: list[ProgressEvent] = []
    with api.load_model(str(tiny_hf), compute_type="float32", threads=1,
                        progress=events.append) as model:
        run = model.transcribe(CLIPS[0], progress=events.append, **FAST)
        segments = list(run)
        assert run.info.language == "zh" and run.info.duration > 3
        report = model.evaluate(SAMPLE, limit=5, progress=events.append, **FAST)
        exported = model.export("ct2", tmp_path / "ct2", quantization="float32",
                                progress=events.append)
        clips = [load_audio(p) for p in CLIPS[:2]]
        mine = model.transcribe_clips(clips, DecodeOptions(**FAST))
    assert len(loads) == 1, "the model was loaded more than once"
    assert report.clips == 5 and report.metric == "cer" and report.model == str(tiny_hf)
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    _check_events(events, "load")
    _check_events(events, "transcribe")
    assert _check_events(events, "evaluate")[-1].figures["cer"] == report.error_rate
    assert (exported / "model.bin").is_file()
    # the export decodes exactly as the model it was made from
    with api.load_model(str(exported), compute_type="float32", threads=1) as again:
        theirs = again.transcribe_clips(clips, DecodeOptions(**FAST))
    assert [t.tokens for t in theirs] == [t.tokens for t in mine]


def test_options_are_checked_like_the_cli(tiny_hf, cache):
    with api.load_model(str(tiny_hf), compute_type="float32", threads=1) as model:
        with pytest.raises(ConfigError, match="unknown option"):
            model.transcribe(CLIPS[0], beam_sise=2)
    with pytest.raises(UserError, match="closed"):
        model.transcribe(CLIPS[0])


def test_cancel_ends_every_decode_the_same_way(tiny_hf, tmp_path, cache):
    cancel = threading.Event()
    with api.load_model(str(tiny_hf), compute_type="float32", threads=1) as model:
        # a streamed transcription: what was yielded stands
        long_audio = np.concatenate([load_audio(p) for p in CLIPS] * 3)
        run = model.transcribe(long_audio, vad=False, cancel=cancel, **FAST)
        with pytest.raises(Cancelled) as info:
            for _ in run:
                cancel.set()
        assert info.value.state == "partial"
        # an evaluation: stops at the next batch and writes nothing
        cancel.clear()
        out = tmp_path / "utt.jsonl"

        def stop_after_first(event: ProgressEvent) -> None:
            if event.done >= 1:
                cancel.set()

        with pytest.raises(Cancelled) as info:
            model.evaluate(SAMPLE, limit=12, batch_size=2, output=out, cancel=cancel,
                           progress=stop_after_first, **FAST)
        assert info.value.state == "removed" and not out.exists()


@pytest.mark.parametrize("backend", ["ct2", "transformers"])
def test_concurrent_calls_give_the_sequential_results(tiny_hf, cache, backend):
    """The facade's thread-safety claim: transcribe_clips and evaluate from several threads at
    once return exactly what the same calls return one after the other."""
    clips = [load_audio(p) for p in CLIPS]
    decode = DecodeOptions(**FAST)
    with api.load_model(str(tiny_hf), backend=backend, compute_type="float32",
                        threads=2) as model:
        alone = [model.transcribe_clips([c], decode)[0].tokens for c in clips]
        report = model.evaluate(SAMPLE, limit=4, **FAST)
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = list(pool.map(lambda c: model.transcribe_clips([c], decode)[0].tokens,
                                     clips * 2))
            reports = list(pool.map(lambda _: model.evaluate(SAMPLE, limit=4, **FAST),
                                    range(3)))
    assert together == alone * 2
    assert {r.error_rate for r in reports} == {report.error_rate}
    assert all([u.hyp for u in r.utterances] == [u.hyp for u in report.utterances]
               for r in reports)
