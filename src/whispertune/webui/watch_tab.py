"""The Watch tab: the chosen run's progress, ETA, curves, memory and log; Stop and Resume;
the runs list and two runs' curves overlaid.

Everything shown is read from the run directory (metrics.jsonl, run.json) and the UI's
process record, every two seconds: a reloaded page, a second browser or a restarted UI shows
the same run with the same curves, and a run started from a terminal can be watched too.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import gradio as gr

from whispertune.errors import UserError
from whispertune.options import ConfigError
from whispertune.webui import form, metrics, process
from whispertune.webui.context import Context, error_text

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0


def _frame(points: list[dict[str, Any]]):
    import pandas as pd

    return pd.DataFrame(points, columns=["step", "value", "series", "run"])


def curves(run_dir: Path):
    """(loss, learning rate, eval score) charts' data of one run."""
    rows = metrics.read_jsonl(Path(run_dir) / "metrics.jsonl")
    loss = metrics.smooth(metrics.curve_rows(rows, metrics.LOSS_KEYS))
    lr = metrics.curve_rows(rows, metrics.LR_KEYS)
    score = metrics.curve_rows(rows, metrics.eval_keys(rows))
    return _frame(loss), _frame(lr), _frame(score)


def compare(runs: list[str]):
    """Loss and eval curves of several runs on one chart each, coloured by run."""
    loss, score = [], []
    for r in runs or []:
        rows = metrics.read_jsonl(Path(r) / "metrics.jsonl")
        name = Path(r).name
        loss += metrics.curve_rows(rows, metrics.LOSS_KEYS, run=name)
        score += metrics.curve_rows(rows, metrics.eval_keys(rows), run=name)
    return _frame(loss), _frame(score)


def memory(ctx: Context, run: str) -> str:
    """Resident memory of the run's process group and, with an NVIDIA GPU, its GPU memory."""
    rec = ctx.manager.record(run)
    if rec is None or not ctx.manager.alive(rec):
        return ""
    parts = []
    try:
        import psutil

        rss = 0
        pids = []
        for p in psutil.process_iter(["pid"]):
            try:
                if __import__("os").getpgid(p.pid) == rec.pgid:
                    rss += p.memory_info().rss
                    pids.append(p.pid)
            except (psutil.Error, OSError):
                continue
        total = psutil.virtual_memory()
        parts.append(f"RAM {rss / 2**30:.2f} GiB (machine: {total.percent:.0f} % used)")
    except ImportError:
        pids = [rec.pid]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory",
                 "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5,
            ).stdout
            used = sum(float(line.split(",")[1]) for line in out.splitlines()
                       if line.strip() and int(line.split(",")[0]) in pids)
            parts.append(f"GPU {used / 1024:.2f} GiB")
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    return " · ".join(parts)


def status_text(ctx: Context, run: str) -> str:
    summary = metrics.summarize(Path(run))
    status = ctx.manager.status(run)
    rec = ctx.manager.record(run)
    if status == process.NOT_STARTED and summary.has_best_dir:
        status = "finished (started outside this UI)"
    line = metrics.progress_line(summary, status, rec.started if rec else None)
    mem = memory(ctx, run)
    return line + (f"  \n{mem}" if mem else "")


def runs_table(ctx: Context) -> list[list[Any]]:
    rows = []
    for path in ctx.manager.runs():
        s = metrics.summarize(path)
        rows.append([
            s.name, ctx.manager.status(path), s.method, s.model,
            f"{s.step}/{s.total_steps or '?'}",
            f"{s.best * 100:.2f} % {s.metric}" if s.best is not None else "",
            "yes" if s.has_best_dir else "", str(path),
        ])
    return rows


def resume(ctx: Context, run: str) -> str:
    """Start the run again with --resume, with its options from run.json (a run started from
    a terminal has no process record) or else the argv the UI started it with."""
    info = metrics.read_run_json(Path(run))
    if info.get("options"):
        values = form.values_from_run(ctx.schema, info)
        values["output"] = run
        argv = form.to_argv(ctx.schema, values)
    else:
        rec = ctx.manager.record(run)
        if rec is None:
            raise UserError(f"{run}: no run.json and no record of how it was started")
        argv = [a for a in rec.argv if a != "--resume"]
    ctx.manager.start(argv, Path(run), resume=True)
    return f"resumed {run}"


def pick_run(ctx: Context, current: str | None) -> str | None:
    """The run to show: the one chosen, else the newest still running (re-attach), else the
    newest."""
    if current:
        return current
    runs = ctx.manager.runs()
    for r in runs:
        if ctx.manager.status(r) in (process.RUNNING, process.STOPPING):
            return str(r)
    return str(runs[0]) if runs else None


def build(ctx: Context) -> None:
    """The tab's widgets and events (inside an open ``gr.Tab``); ``ctx.watched`` exists."""
    with gr.Row():
        ctx.watched.render()
        refresh_btn = gr.Button("↻", scale=0, min_width=50)
        stop_btn = gr.Button("■ Stop", variant="stop", scale=0, min_width=110, elem_id="stop")
        resume_btn = gr.Button("▶ Resume", scale=0, min_width=110, elem_id="resume")
        to_form_btn = gr.Button("Options → form", scale=0, min_width=140)
    status = gr.Markdown(elem_id="run-status")
    action = gr.Markdown(elem_id="run-action")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="value", color="series", title="training loss",
                                height=260, elem_id="loss-plot")
        score_plot = gr.LinePlot(x="step", y="value", color="series",
                                 title="evaluation error rate (%)", height=260)
        lr_plot = gr.LinePlot(x="step", y="value", color="series", title="learning rate",
                              height=260)
    log = gr.Code(label="log", language=None, lines=12, max_lines=12, interactive=False,
                  elem_id="run-log")
    with gr.Accordion("All runs, and compare", open=True):
        table = gr.Dataframe(headers=["run", "status", "method", "model", "steps", "best",
                                      "best/", "path"], interactive=False, wrap=True,
                             max_height=260, elem_id="runs-table")
        pick = gr.Dropdown(label="overlay the curves of these runs", multiselect=True,
                           choices=[])
        with gr.Row():
            cmp_loss = gr.LinePlot(x="step", y="value", color="run", title="loss by run",
                                   height=240)
            cmp_score = gr.LinePlot(x="step", y="value", color="run",
                                    title="eval error rate (%) by run", height=240)
    timer = gr.Timer(REFRESH_SECONDS)
    seen = gr.State(None)

    def refresh(run, last):
        run = pick_run(ctx, run)
        if not run:
            return [gr.skip(), "no runs yet: start one in the Train tab", gr.skip(), gr.skip(),
                    gr.skip(), gr.skip(), last]
        path = Path(run)
        key = tuple(_stamp(p) for p in (path / "metrics.jsonl", ctx.manager.log_path(run)))
        key = (run, *key)
        text = status_text(ctx, run)
        if key == last:
            return [gr.skip(), text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), last]
        loss, lr, score = curves(path)
        tail = process.log_tail(ctx.manager.log_path(run))
        choices = [str(p) for p in ctx.manager.runs()]
        return [gr.Dropdown(choices=choices, value=run), text, loss, score, lr, tail, key]

    outs = [ctx.watched, status, loss_plot, score_plot, lr_plot, log, seen]
    timer.tick(refresh, [ctx.watched, seen], outs, show_progress="hidden")
    refresh_btn.click(lambda r: refresh(r, None), [ctx.watched], outs)
    ctx.watched.change(lambda r: refresh(r, None), [ctx.watched], outs, show_progress="hidden")

    def on_stop(run):
        if not run:
            return "choose a run first"
        try:
            return ctx.manager.stop(run)
        except UserError as e:
            return f"❌ {error_text(e)}"

    stop_btn.click(on_stop, [ctx.watched], [action])

    def on_resume(run):
        if not run:
            return "choose a run first"
        try:
            return f"✅ {resume(ctx, run)}"
        except (UserError, ConfigError, OSError) as e:
            return f"❌ {error_text(e)}"

    resume_btn.click(on_resume, [ctx.watched], [action])

    def on_to_form(run):
        info = metrics.read_run_json(Path(run)) if run else {}
        if not info.get("options"):
            return ["no run.json options to load"] + [gr.skip()] * len(ctx.fields)
        values = form.values_from_run(ctx.schema, info)
        values["output"] = str(Path(run).parent / (Path(run).name + "_again"))
        return [f"loaded {run}'s options into the Train tab (new output directory)"] + [
            form.widget_value(r, values[r["name"]]) for r in ctx.schema
        ]

    to_form_btn.click(on_to_form, [ctx.watched], [action, *ctx.fields.values()])

    def on_table():
        rows = runs_table(ctx)
        return rows, gr.Dropdown(choices=[r[-1] for r in rows])

    table_timer = gr.Timer(REFRESH_SECONDS * 3)
    table_timer.tick(lambda: runs_table(ctx), [], [table], show_progress="hidden")
    pick.change(compare, [pick], [cmp_loss, cmp_score])
    ctx.on_load.append((lambda r: refresh(r, None), [ctx.watched], outs))
    ctx.on_load.append((on_table, [], [table, pick]))


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return 0, 0
