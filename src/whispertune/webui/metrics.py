"""A run directory read for display: curves from metrics.jsonl, options from run.json,
progress with ETA, the best score. Only files the trainer writes are read, so a run started
from a terminal shows the same as one started from the UI, and a reload shows everything.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# metrics.jsonl's keys drawn as curves, by chart.
LOSS_KEYS = ("loss",)
LR_KEYS = ("lr",)
EVAL_PREFIX = "eval_"  # eval_cer / eval_wer; eval_seconds is not a score
NOT_SCORES = ("eval_seconds",)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line being written (cut off) is skipped, not an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def read_run_json(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def eval_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith(EVAL_PREFIX) and k not in NOT_SCORES and k not in keys:
                keys.append(k)
    return keys


def curve_rows(rows: list[dict[str, Any]], keys: tuple[str, ...] | list[str],
               run: str = "") -> list[dict[str, Any]]:
    """Long-format points (step, value, series, run) for a line chart; eval rates in %."""
    points = []
    for r in rows:
        for k in keys:
            v = r.get(k)
            if isinstance(v, (int, float)) and "step" in r:
                value = v * 100 if k.startswith(EVAL_PREFIX) else v
                points.append({"step": r["step"], "value": value, "series": k, "run": run})
    return points


def smooth(points: list[dict[str, Any]], weight: float = 0.6) -> list[dict[str, Any]]:
    """An exponential moving average of each series, added as '<series> (smoothed)'
    (TensorBoard's and LlamaBoard's way to read a noisy loss)."""
    out = list(points)
    last: dict[str, float] = {}
    for p in points:
        key = p["series"] + p["run"]
        prev = last.get(key)
        value = p["value"] if prev is None else weight * prev + (1 - weight) * p["value"]
        last[key] = value
        out.append({**p, "value": value, "series": p["series"] + " (smoothed)"})
    return out


@dataclass
class RunSummary:
    """One line of the runs list and the progress line of the watched run."""

    name: str
    path: Path
    method: str
    model: str
    step: int
    total_steps: int | None
    loss: float | None
    best: float | None  # best eval rate (fraction) over the run
    metric: str | None
    has_best_dir: bool
    seconds_per_step: float | None

    @property
    def fraction(self) -> float | None:
        if not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)

    def eta_seconds(self) -> float | None:
        """Steps left at the recent rate (evaluations not counted: the rate is training's)."""
        if self.total_steps is None or self.seconds_per_step is None:
            return None
        return max(0, self.total_steps - self.step) * self.seconds_per_step


def summarize(run_dir: Path) -> RunSummary:
    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    opts = info.get("options", {})
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "loss" in r]
    keys = eval_keys(rows)
    best = None
    metric = None
    if keys:
        key = keys[0]
        metric = key[len(EVAL_PREFIX):]
        scores = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        best = min(scores) if scores else None
    seconds = None
    if steps and steps[-1].get("samples_per_s"):
        per_step = (opts.get("batch_size") or 1) * (opts.get("grad_accum") or 1) * (
            info.get("world_size") or 1
        )
        seconds = per_step / steps[-1]["samples_per_s"]
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        method=str(opts.get("method", "?")),
        model=str(opts.get("model", "?")),
        step=max((r.get("step", 0) for r in rows), default=0),
        total_steps=info.get("total_steps"),
        loss=steps[-1]["loss"] if steps else None,
        best=best,
        metric=metric,
        has_best_dir=(run_dir / "best").is_dir(),
        seconds_per_step=seconds,
    )


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(summary: RunSummary, status: str, started: float | None) -> str:
    """LlamaBoard's ``i/N elapsed < remaining``, with the status and the latest figures."""
    parts = [f"**{status}**"]
    if summary.total_steps:
        pct = 100 * (summary.fraction or 0)
        parts.append(f"step {summary.step}/{summary.total_steps} ({pct:.0f} %)")
    elif summary.step:
        parts.append(f"step {summary.step}")
    if started is not None and status in ("running", "stopping"):
        parts.append(f"{clock(time.time() - started)} < {clock(summary.eta_seconds())}")
    if summary.loss is not None:
        parts.append(f"loss {summary.loss:.4g}")
    if summary.best is not None:
        parts.append(f"best eval {summary.metric} {summary.best * 100:.2f} %")
    return " · ".join(parts)
