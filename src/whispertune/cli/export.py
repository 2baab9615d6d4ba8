"""CLI: ``whispertune export`` -> whispertune.export (CTranslate2, GGML)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from whispertune.export.ct2 import QUANTIZATIONS, export_ct2

# Other export formats register themselves from their own CLI module (cli/export_<name>.py).
_EXTRA_FORMATS = ("export_ggml",)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to CTranslate2 (faster-whisper) or GGML (whisper.cpp)",
        description="Export any model source (built-in, transformers dir, adapter, hub id) to "
        "the runtime you deploy with.",
    )
    esub = p.add_subparsers(dest="export_format", metavar="FORMAT", required=True)
    c = esub.add_parser(
        "ct2",
        help="a CTranslate2 directory that faster-whisper loads unchanged",
        description="Convert with CTranslate2's converter (adapters are merged first) and add "
        "the tokenizer.json and preprocessor_config.json faster-whisper reads.",
    )
    c.add_argument(
        "--model", default="builtin:base", help="model to export (default: builtin:base)"
    )
    c.add_argument("--output", type=Path, required=True, help="directory to create")
    c.add_argument(
        "--quantization",
        default="int8",
        choices=QUANTIZATIONS,
        help="weight storage (default: int8)",
    )
    c.add_argument("--force", action="store_true", help="replace an existing output directory")
    c.set_defaults(func=_ct2)
    for name in _EXTRA_FORMATS:
        try:
            module = importlib.import_module(f"whispertune.cli.{name}")
        except ImportError:
            continue
        module.register(esub)


def _ct2(args: argparse.Namespace) -> int:
    out = export_ct2(args.model, args.output, quantization=args.quantization, force=args.force)
    print(f"CTranslate2 model ({args.quantization}): {out}")
    return 0
