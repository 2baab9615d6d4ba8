"""The ``whispertune`` command: one subcommand per library entry point, nothing else.

Each module in this package registers its subcommands and maps parsed options onto a library
function; no training, decoding or normalization logic lives here.
"""

from __future__ import annotations

import argparse
import logging
import sys

from whispertune import __version__
from whispertune.audio import AudioError
from whispertune.errors import UserError
from whispertune.options import ConfigError

# Modules that register subcommands, in the order --help lists them.
_COMMAND_MODULES = ("demo", "data", "models", "train", "evaluate", "transcribe", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whispertune",
        description="Fine-tune, evaluate, speed up and deploy OpenAI Whisper. "
        "Run 'whispertune COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"whispertune {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"whispertune.cli.{name}").register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO if verbose < 2 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Third-party libraries are chatty at INFO; keep them at WARNING unless -vv.
    for noisy in ("httpx", "urllib3", "huggingface_hub", "filelock", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    if verbose < 2:
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
        except ImportError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.verbose, args.quiet)
    try:
        result = args.func(args)
    except (UserError, AudioError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
