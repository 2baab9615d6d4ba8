"""``corpus evaluate`` gives the report ``whispertune evaluate`` gives for the same model."""

from __future__ import annotations

import json

from tests.corpus.conftest import TINY_DECODE
from whispertune import api
from whispertune.corpus import CorpusEvaluateOptions, evaluate_corpus
from whispertune.corpus.cluster import ClusterOptions
from whispertune.options import build


def test_report_equals_single_process_evaluate(ray_address, tiny_model, clips, tmp_path):
    manifest = tmp_path / "test.jsonl"
    refs = ["其中有两个是内因的指标", "就是根据经济体自身情况决定房价上涨或者下跌", "你好"]
    manifest.write_text(
        "".join(
            json.dumps(
                {"audio": {"path": str(c)}, "sentence": refs[i % 3], "language": "Chinese"},
                ensure_ascii=False,
            )
            + "\n"
            for i, c in enumerate(clips)
        ),
        encoding="utf-8",
    )
    decode = {**TINY_DECODE, "batch_size": 2}
    opts = build(
        CorpusEvaluateOptions,
        {
            "manifest": manifest,
            "model": str(tiny_model / "ct2"),
            "output": tmp_path / "u.jsonl",
            **decode,
        },
        source="options",
    )
    opts.cluster = ClusterOptions(actors=2)
    report = evaluate_corpus(opts)
    with api.load_model(str(tiny_model / "ct2"), threads=1) as model:
        single = model.evaluate(manifest, **decode)
    keys = (
        "metric",
        "error_rate",
        "substitutions",
        "deletions",
        "insertions",
        "reference_length",
        "clips",
    )
    assert {k: getattr(report, k) for k in keys} == {k: getattr(single, k) for k in keys}
    assert report.clips == len(clips)
    assert [u.hyp for u in report.utterances] == [u.hyp for u in single.utterances]
    assert abs(report.audio_seconds - single.audio_seconds) < 1e-6
    assert len((tmp_path / "u.jsonl").read_text().splitlines()) == len(clips)
