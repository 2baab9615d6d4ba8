"""The training web UI: Data → Train → Watch → Evaluate / Export / Try, one ``gr.Blocks``.

Built on the library and the CLI only: training is a ``whispertune train`` subprocess
(:mod:`whispertune.webui.process`), everything else calls :mod:`whispertune.api` and the
data tools. ``build_app`` makes the Blocks (for tests and embedding); ``launch`` serves it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr

from whispertune.network import is_loopback
from whispertune.webui import data_tab, form, tools_tab, train_tab, watch_tab
from whispertune.webui.context import Context
from whispertune.webui.process import RunManager

logger = logging.getLogger(__name__)

CSS = """
.gradio-container {max-width: 1500px !important}
#command textarea, #command .cm-content {font-size: 13px}
#run-status {font-size: 15px}
"""


def build_app(runs_dir: str | Path = "runs") -> tuple[gr.Blocks, Context]:
    """The app and its context (the run manager is ``ctx.manager``)."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(runs_dir=runs_dir, manager=RunManager(runs_dir), schema=form.train_schema())
    with gr.Blocks(title="whispertune — fine-tune Whisper") as demo:
        gr.Markdown(
            f"## whispertune · fine-tune Whisper\nRuns are kept in `{runs_dir.absolute()}`; a "
            "run goes on when this page or this server closes, and shows here again when "
            "it is back."
        )
        train_tab.make_fields(ctx)
        ctx.watched = gr.Dropdown(label="run", choices=[], allow_custom_value=True, scale=6,
                                  render=False, elem_id="watched-run")
        with gr.Tabs() as tabs:
            ctx.tabs = tabs
            with gr.Tab("1 · Data", id="data"):
                data_tab.build(ctx)
            with gr.Tab("2 · Train", id="train"):
                train_tab.build(ctx)
            with gr.Tab("3 · Watch runs", id="watch"):
                watch_tab.build(ctx)
            with gr.Tab("4 · Evaluate · Export · Try", id="tools"):
                tools_tab.build(ctx)
        for fn, inputs, outputs in ctx.on_load:
            demo.load(fn, inputs, outputs)
    return demo, ctx


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """``user:password`` -> (user, password); the password may hold ':'."""
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise ValueError("--auth takes user:password")
    return user, password


def launch(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | None = None, block: bool = True) -> gr.Blocks:
    """Serve the app; with ``block`` False it returns once the server listens (tests)."""
    if not is_loopback(host) and auth is None:
        logger.warning(
            "the web UI listens on %s without --auth: anyone who can reach this port can "
            "read your data and start processes; pass --auth user:password", host)
    demo, _ctx = build_app(runs_dir)
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=not block,
                theme=gr.themes.Soft(), css=CSS, show_error=True, quiet=True,
                  allowed_paths=[str(Path(runs_dir).absolute())])
    return demo
