"""Evaluation: scoring arithmetic on known pairs, and whole runs on real and tiny models."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_transcribe import _Stub
from tests.tiny import save_tiny_whisper
from whispertune import evaluate as evaluate_module
from whispertune import options
from whispertune.backends.base import DecodeOptions, Transcript
from whispertune.cli import main
from whispertune.data.manifest import Sample
from whispertune.evaluate import EvaluateOptions, evaluate, evaluate_samples, score_pairs
from whispertune.progress import Cancelled

SAMPLE = "src/whispertune/samples/aishell_s0150/test.jsonl"


def test_cer_counts_substitutions_deletions_insertions():
    s, d, i, n, per = score_pairs(["abcd", "xyz"], ["abed", "xyzzq"], "cer")
    assert (s, d, i, n) == (1, 0, 2, 7) and per == [1, 2]
    s, d, i, n, per = score_pairs(["你好世界"], ["你世界啊"], "cer")
    assert (s, d, i, n) == (0, 1, 1, 4)


def test_wer_counts_words():
    s, d, i, n, _ = score_pairs(["the cat sat"], ["the bat sat down"], "wer")
    assert (s, d, i, n) == (1, 0, 1, 3)


def test_empty_reference_counts_insertions():
    s, d, i, n, per = score_pairs([""], ["ab"], "cer")
    assert (i, n, per) == (2, 0, [2])


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.mark.parametrize("backend", ["transformers", "ct2"])
def test_tiny_model_runs_end_to_end_on_both_backends(tiny_hf, tmp_path, backend, monkeypatch):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    opts = options.build(EvaluateOptions, {
        "manifest": SAMPLE, "model": str(tiny_hf), "backend": backend, "limit": 3,
        "beam_size": 1, "max_new_tokens": 8, "compute_type": "float32", "temperatures": [0.0],
        "output": tmp_path / "utt.jsonl",
    })
    seen = []
    report = evaluate(opts, progress=lambda e: seen.append((e.done, e.total)))
    assert report.clips == 3 and report.metric == "cer"
    assert seen[-1] == (3, 3)
    assert report.error_rate > 0.5  # random weights: nonsense, but scored
    rows = [json.loads(line) for line in (tmp_path / "utt.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert [r["error_rate"] for r in rows] == sorted((r["error_rate"] for r in rows), reverse=True)


def test_cancel_stops_before_decoding(tiny_hf):
    cancel = threading.Event()
    cancel.set()
    opts = options.build(EvaluateOptions, {"manifest": SAMPLE, "model": str(tiny_hf),
                                           "backend": "transformers"})
    with pytest.raises(Cancelled, match="cancelled"):
        evaluate(opts, cancel=cancel)


def test_missing_audio_names_manifest_line(tmp_path, tiny_hf):
    m = tmp_path / "m.jsonl"
    m.write_text('{"audio": {"path": "gone.wav"}, "sentence": "x"}\n')
    assert main(["evaluate", "--manifest", str(m), "--model", str(tiny_hf),
                 "--backend", "transformers"]) == 2


@pytest.mark.slow
def test_builtin_base_mandarin_cer_and_cli(capsys, tmp_path):
    code = main(["evaluate", "--manifest", SAMPLE, "--limit", "16", "--json",
                 "--output", str(tmp_path / "u.jsonl")])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metric"] == "cer" and summary["clips"] == 16
    assert 0.05 < summary["error_rate"] < 0.45
    assert summary["substitutions"] + summary["deletions"] + summary["insertions"] > 0


@pytest.mark.slow
def test_builtin_base_english_wer(shared_data):
    opts = options.build(EvaluateOptions, {
        "manifest": shared_data / "en/ljspeech/manifest.jsonl", "limit": 12, "beam_size": 1,
    })
    report = evaluate(opts)
    assert report.metric == "wer"
    assert report.error_rate < 0.2


def test_packed_evaluation_scores_every_clip(tiny_hf, tmp_path, monkeypatch):
    """--pack: clips share 30 s windows; a clip left without text (the tiny model emits no
    timestamps) is decoded again on its own, so every clip gets a hypothesis."""
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    opts = options.build(EvaluateOptions, {
        "manifest": SAMPLE, "model": str(tiny_hf), "backend": "ct2", "limit": 6, "pack": True,
        "beam_size": 1, "max_new_tokens": 8, "temperatures": [0.0], "compute_type": "float32",
    })
    seen = []
    report = evaluate(opts, progress=lambda e: seen.append((e.done, e.total)))
    assert report.clips == 6 and seen[-1] == (6, 6)
    assert all(u.hyp for u in report.utterances)
    assert report.audio_seconds > 20


def test_pack_splits_text_by_timestamps():
    from whispertune.backends.base import ClipSegment, Transcript
    from whispertune.evaluate import _Pack, _split_pack

    pack = _Pack("zh")
    for i, seconds in enumerate([3.0, 4.0, 2.0]):
        pack.add(i, np.zeros(int(seconds * 16000), dtype=np.float32))
    assert [(i, round(a, 2), round(b, 2)) for i, a, b in pack.items] == [
        (0, 0.0, 3.0), (1, 5.0, 9.0), (2, 11.0, 13.0)]
    t = Transcript(text="", segments=[
        ClipSegment(0.0, 3.2, "一"), ClipSegment(4.6, 7.0, "二"), ClipSegment(7.0, 9.4, "三"),
        ClipSegment(10.5, 13.0, "四")])
    assert _split_pack(pack, t) == {0: ["一"], 1: ["二", "三"], 2: ["四"]}


@pytest.mark.slow
def test_packed_builtin_base_accuracy():
    opts = options.build(EvaluateOptions, {"manifest": SAMPLE, "limit": 20, "pack": True})
    report = evaluate(opts)
    assert report.clips == 20 and report.error_rate < 0.3


class _Timed(_Stub):
    """A backend stand-in whose decode takes longer for some batches and records how many
    of its calls overlap: what evaluate's scheduling is tested against."""

    name = "timed"

    def __init__(self, fail_at: int | None = None):
        super().__init__([])
        self.lock = threading.Lock()
        self.running = self.most = self.calls = 0
        self.fail_at = fail_at

    def _transcribe_clips(self, batch, options):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05 if call % 2 else 0.01)
            if call == self.fail_at:
                raise RuntimeError("decoder failed")
            # the clip's length in samples as its text: each hypothesis names its clip
            return [Transcript(text=str(len(a)), language="zh") for a in batch.audios]
        finally:
            with self.lock:
                self.running -= 1


def _samples(n: int) -> list[Sample]:
    """Clips named by their length in samples, a different one each."""
    return [
        Sample(audio_path=Path(f"{16000 + 160 * i}.wav"), sentence=str(16000 + 160 * i), line=i + 1)
        for i in range(n)
    ]


def _silence_as_long_as_its_name(path, start=None, end=None) -> np.ndarray:
    return np.zeros(int(Path(path).stem), np.float32)


def test_two_batches_are_in_flight_and_each_clip_keeps_its_text(monkeypatch):
    """The next batch goes to the backend before the current one is done (so a backend
    with several workers never idles at a batch's end), never more than two at once, and
    every clip gets its own transcript whatever order the batches finish in."""
    samples = _samples(11)
    monkeypatch.setattr(evaluate_module, "load_audio", _silence_as_long_as_its_name)
    backend = _Timed()
    report = evaluate_samples(backend, samples, decode=DecodeOptions(batch_size=2))
    assert backend.calls == 6 and backend.most == 2
    assert [u.hyp for u in sorted(report.utterances, key=lambda u: u.line)] == [
        s.sentence for s in samples
    ]
    assert report.error_rate == 0.0


def test_a_failing_batch_fails_the_evaluation(monkeypatch):
    monkeypatch.setattr(evaluate_module, "load_audio", _silence_as_long_as_its_name)
    with pytest.raises(RuntimeError, match="decoder failed"):
        evaluate_samples(_Timed(fail_at=2), _samples(8), decode=DecodeOptions(batch_size=2))
