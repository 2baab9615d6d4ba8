"""The ``whispertune`` command: one subcommand per library entry point, nothing else.

Each module in this package registers its subcommands and maps parsed options onto a library
function; no training, decoding or normalization logic lives here. Registering imports only
the options dataclasses (no torch, transformers or CTranslate2), so ``--help`` answers at once;
the libraries are imported when a command runs.

What the user sees, as with openai-whisper and faster-whisper: results on stdout; warnings
(``warning: ...``) and errors (``error: ...``, naming the flag) on stderr, each once; INFO logs
only with ``-v``; third-party deprecation notices never.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import warnings

from whispertune import __version__
from whispertune.audio import AudioError, allow_partial_audio
from whispertune.errors import UserError
from whispertune.options import ConfigError

# Modules that register subcommands, in the order --help lists them.
_COMMAND_MODULES = (
    "demo",
    "data",
    "models",
    "train",
    "merge",
    "evaluate",
    "transcribe",
    "corpus",
    "export",
    "gui",
    "serve",
    "webui",
)
# Commands that read audio files and so take --allow-partial-audio ('data validate' adds it
# itself).
_AUDIO_COMMANDS = ("train", "evaluate", "transcribe")
# Kept at WARNING (INFO is their progress chatter) unless -vv.
_NOISY_LOGGERS = ("httpx", "urllib3", "huggingface_hub", "filelock", "faster_whisper", "jieba")


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error format: ``error: ...`` and where to read more."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="whispertune",
        description="Fine-tune, evaluate, speed up and deploy OpenAI Whisper. "
        "Run 'whispertune COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"whispertune {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log what is done (-vv for debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars and no warnings"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"whispertune.cli.{name}").register(sub)
    from whispertune.cli._command import add_partial_audio_flag

    for name in _AUDIO_COMMANDS:
        add_partial_audio_flag(sub.choices[name])
    return parser


class _Formatter(logging.Formatter):
    """``warning: text`` (as errors read ``error: text``); with -v the logger's name too."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if self.verbose:
            return f"{record.levelname} {record.name}: {message}"
        return f"{record.levelname.lower()}: {message}"


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else logging.WARNING
        if verbose == 0
        else logging.INFO
        if verbose == 1
        else logging.DEBUG
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    logging.basicConfig(level=level, handlers=[handler])  # a no-op where a host configured it
    third_party = logging.DEBUG if verbose >= 2 else max(level, logging.WARNING)
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(third_party)
    if verbose < 2:
        # transformers reads this when it is first imported and sets its logger from it; the
        # level below covers a transformers imported already (tests call main in-process).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        logging.getLogger("transformers").setLevel(logging.ERROR)


def _silence_library_warnings(verbose: int) -> None:
    """Deprecation and future notices of transformers, peft, torch, jieba (pkg_resources)...
    are meant for the developers of whispertune, not its users; shown with -vv."""
    if verbose >= 2:
        return
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # a process started for this command alone, which may restart itself (train's allocator)
    args.from_command_line = argv is None
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    _silence_library_warnings(args.verbose)
    partial = (
        allow_partial_audio(True)
        if getattr(args, "allow_partial_audio", False)
        else contextlib.nullcontext()
    )
    try:
        with partial:
            result = args.func(args)
    except (UserError, AudioError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
