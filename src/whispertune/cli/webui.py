"""CLI: ``whispertune webui`` -> whispertune.webui.app.launch (Gradio, the ``webui`` extra)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from whispertune import options
from whispertune.cli._command import add_command, needs_extra
from whispertune.errors import UserError


@dataclass
class WebUIOptions:
    """Options of ``whispertune webui``."""

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address to listen on; anything but loopback needs --auth"},
    )
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    runs_dir: Path = field(
        default=Path("runs"),
        metadata={"help": "folder of training runs, uploads, presets and scripts"},
    )
    auth: str | None = field(
        default=None,
        metadata={"help": "user:password the browser must give (Gradio's login page)",
                  "metavar": "USER:PASSWORD"},
    )


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub, "webui", WebUIOptions, _webui,
        help="training web UI in the browser: data, train, watch, evaluate, export",
        description="Serve the training web UI (Gradio): prepare and check data, set every "
        "training option with the equivalent command shown, start/stop/resume 'whispertune "
        "train' runs that go on when the UI closes, watch curves, compare runs, evaluate, "
        "export and try models. Needs the webui extra: pip install 'whispertune[webui]'.",
    )


def _webui(args: argparse.Namespace) -> int:
    opts = options.from_args(WebUIOptions, args)
    with needs_extra("webui", "the web UI"):
        import gradio  # noqa: F401 - only to say what is missing before anything starts

        from whispertune.webui.app import launch, parse_auth
    try:
        auth = parse_auth(opts.auth)
    except ValueError as e:
        raise UserError(str(e)) from e
    print(f"whispertune web UI on http://{opts.host}:{opts.port} (runs in {opts.runs_dir}); "
          "Ctrl-C stops the UI, not the runs")
    launch(opts.runs_dir, opts.host, opts.port, auth)
    return 0
