"""A run directory read for display, from files in the trainer's format."""

from __future__ import annotations

import json

from whispertune.webui import metrics


def _run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"step": 1, "epoch": 0.25, "loss": 10.0, "lr": 1e-4, "samples_per_s": 4.0},
        {"step": 2, "epoch": 0.5, "loss": 8.0, "lr": 2e-4, "samples_per_s": 4.0},
        {"step": 2, "eval_cer": 0.5, "eval_seconds": 1.0},
        {"step": 4, "epoch": 1.0, "loss": 6.0, "lr": 2e-4, "samples_per_s": 2.0},
        {"step": 4, "eval_cer": 0.25, "eval_seconds": 1.0},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo'  # being written
    (run / "metrics.jsonl").write_text(text)
    (run / "run.json").write_text(json.dumps({
        "options": {"method": "lora", "model": "m", "batch_size": 2, "grad_accum": 2},
        "total_steps": 10, "world_size": 1}))
    return run


def test_summary_progress_and_eta(tmp_path):
    s = metrics.summarize(_run(tmp_path))
    assert (s.step, s.total_steps, s.loss, s.best, s.metric) == (4, 10, 6.0, 0.25, "cer")
    assert s.seconds_per_step == 2.0  # 4 samples a step at 2 samples/s
    assert s.eta_seconds() == 12.0 and s.fraction == 0.4
    line = metrics.progress_line(s, "running", started=None)
    assert "step 4/10 (40 %)" in line and "best eval cer 25.00 %" in line


def test_curves_are_long_format_with_rates_in_percent(tmp_path):
    rows = metrics.read_jsonl(_run(tmp_path) / "metrics.jsonl")
    assert metrics.eval_keys(rows) == ["eval_cer"]  # eval_seconds is not a score
    score = metrics.curve_rows(rows, metrics.eval_keys(rows), run="a")
    assert [(p["step"], p["value"], p["run"]) for p in score] == [(2, 50.0, "a"), (4, 25.0, "a")]
    loss = metrics.smooth(metrics.curve_rows(rows, ["loss"]), weight=0.5)
    smoothed = [p["value"] for p in loss if p["series"] == "loss (smoothed)"]
    assert smoothed == [10.0, 9.0, 7.5]
