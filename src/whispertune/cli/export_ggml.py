"""CLI: ``whispertune export ggml`` -> whispertune.export.ggml.export_ggml."""

from __future__ import annotations

import argparse
from pathlib import Path

from whispertune.cli._progress import progress_bar
from whispertune.export.ggml import DTYPES, QUANTIZATIONS, export_ggml


def register(esub: argparse._SubParsersAction) -> None:
    g = esub.add_parser(
        "ggml",
        help="a GGML model file that whisper.cpp loads (f16, f32, or quantized q8_0/q5_0/q4_0)",
        description="Write a whisper.cpp GGML model file from any model source: the built-in "
        "model, a transformers directory, a LoRA/AdaLoRA adapter directory (merged into its base "
        "first) or a hub id. The file is checked by loading it in whisper.cpp (pywhispercpp) "
        "before it is put in place.",
    )
    g.add_argument(
        "--model",
        default="builtin:base",
        help="model to export: builtin:base, builtin:tiny.en, a transformers or adapter "
        "directory, or a hub id (default: builtin:base)",
    )
    g.add_argument(
        "--output",
        type=Path,
        required=True,
        help="GGML file to write, for example ggml-model.bin (required)",
    )
    g.add_argument(
        "--dtype",
        default="f16",
        choices=DTYPES,
        help="storage of the weight matrices. f16 is what whisper.cpp runs; f32 loads but "
        "whisper.cpp 1.8's CPU backend aborts encoding it (its conv1d needs f16 kernels) "
        "(default: f16)",
    )
    g.add_argument(
        "--quantize",
        default=None,
        choices=QUANTIZATIONS,
        help="quantize the 2-D weight matrices as whisper.cpp's quantize tool does (q8_0 about "
        "half the f16 size with near-identical output; q5_0 and q4_0 smaller, less accurate); "
        "needs --dtype f16; default: not quantized",
    )
    g.add_argument(
        "--force", action="store_true", help="replace an existing output file (default: refuse)"
    )
    g.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip loading the written file in whisper.cpp before putting it in place "
        "(default: verify)",
    )
    g.set_defaults(func=_ggml)


def _ggml(args: argparse.Namespace) -> int:
    with progress_bar("writing tensors") as progress:
        out = export_ggml(
            args.model,
            args.output,
            dtype=args.dtype,
            quantize=args.quantize,
            force=args.force,
            verify=args.verify,
            progress=progress,
        )
    label = args.quantize or args.dtype
    print(f"GGML model ({label}, {out.stat().st_size / 1e6:.1f} MB): {out}")
    return 0
