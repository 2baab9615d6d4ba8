"""One way to add a subcommand: its options dataclass, its run function, its help.

Why a helper: every command is the same four steps (add the parser, add the dataclass's
flags, maybe ``--config``, point it at its function); written out in each module they differ
only in names, and a command that forgets one (``--config``, the raw description) is how the
CLI drifted apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from whispertune.errors import UserError


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    options: type | None,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str | None = None,
    config_file: bool = False,
    raw_description: bool = False,
) -> argparse.ArgumentParser:
    """Add ``name`` to ``sub`` with the flags of the dataclass ``options`` (None: no options);
    ``config_file`` adds ``--config`` (for long commands); ``raw_description`` keeps the
    description's line breaks."""
    from whispertune.options import add_options

    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter
        if raw_description
        else argparse.HelpFormatter,
    )
    if options is not None:
        add_options(parser, options, config_file=config_file)
    parser.set_defaults(func=run)
    return parser


def add_group(
    sub: argparse._SubParsersAction, name: str, *, help: str, description: str | None = None
) -> argparse._SubParsersAction:
    """A command with subcommands of its own (``data``, ``models``, ``export``); run without
    one it prints its help."""
    parser = sub.add_parser(name, help=help, description=description or help)
    parser.set_defaults(func=lambda _args: (parser.print_help(), 2)[1])
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND")


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Imports of an optional extra (serve, webui, gui) inside this block that fail say which
    extra to install, instead of a traceback; a failing import of our own modules is a bug and
    stays one."""
    try:
        yield
    except ImportError as e:
        if (e.name or "").startswith("whispertune"):
            raise
        raise UserError(
            f"{what} needs the '{extra}' extra ({e.name} is missing): "
            f"pip install 'whispertune[{extra}]'"
        ) from e


def add_partial_audio_flag(parser: argparse.ArgumentParser) -> None:
    """``--allow-partial-audio`` for a command that reads audio files: one flag, one meaning
    everywhere (whispertune.audio.allow_partial_audio, applied by ``main`` around the run)."""
    parser.add_argument(
        "--allow-partial-audio",
        action="store_true",
        help="use the part that decodes of an audio file that ends before its header says "
        "(cut short) or holds damaged data, with a warning, instead of stopping with an "
        "error (also: WHISPERTUNE_ALLOW_PARTIAL_AUDIO=1)",
    )
