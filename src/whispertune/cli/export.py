"""CLI: ``whispertune export ct2|ggml`` -> whispertune.export.ct2 / whispertune.export.ggml."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from whispertune import options
from whispertune.cli._command import add_command, add_group
from whispertune.errors import UserError
from whispertune.export.ct2 import ExportCT2Options
from whispertune.export.ggml import ExportGGMLOptions
from whispertune.staging import check_output_file


def register(sub: argparse._SubParsersAction) -> None:
    esub = add_group(
        sub,
        "export",
        help="export a model to CTranslate2 (faster-whisper) or GGML (whisper.cpp)",
        description="Export any model source (built-in, transformers dir, adapter, hub id) to "
        "the runtime you deploy with.",
    )
    esub.required = True
    add_command(
        esub,
        "ct2",
        ExportCT2Options,
        _ct2,
        help="a CTranslate2 directory that faster-whisper loads unchanged",
        description="Convert with CTranslate2's converter (adapters are merged first) and add "
        "the tokenizer.json and preprocessor_config.json faster-whisper reads.",
        config_file=True,
    )
    add_command(
        esub,
        "ggml",
        ExportGGMLOptions,
        _ggml,
        help="a GGML model file that whisper.cpp loads (f16, f32, or quantized q8_0/q5_0/q4_0)",
        description="Write a whisper.cpp GGML model file from any model source: the built-in "
        "model, a transformers directory, a LoRA/AdaLoRA adapter directory (merged into its "
        "base first) or a hub id. The file is checked by loading it in whisper.cpp "
        "(pywhispercpp) before it is put in place. Sizes and accuracy of each storage: "
        "docs/export.md.",
        config_file=True,
    )


# Bar titles of the export stages (whispertune.progress events).
_STAGES = {
    "load": "loading model",
    "merge": "merging adapter",
    "convert": "converting",
    "write": "writing tensors",
    "verify": "verifying in whisper.cpp",
}


@contextlib.contextmanager
def written_or_error(output: object) -> Iterator[None]:
    """An OS error while writing (a full disk, a folder removed meanwhile) becomes a UserError
    that says the old output is as it was: outputs are built beside ``output`` and moved in
    whole (whispertune.staging), so a failed write never leaves half a model there."""
    try:
        yield
    except OSError as e:
        raise UserError(f"{output}: not written: {e} (left as it was before this run)") from e


def _ct2(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import TqdmProgress
    from whispertune.export.ct2 import export_ct2

    opts = options.from_args(ExportCT2Options, args)
    bars = TqdmProgress({**_STAGES, "write": "writing"}, quiet=args.quiet)
    try:
        with written_or_error(opts.output):
            out = export_ct2(
                opts.model,
                opts.output,
                quantization=opts.quantization,
                force=opts.force,
                progress=bars,
            )
    finally:
        bars.close()
    print(f"CTranslate2 model ({opts.quantization}): {out}")
    return 0


def _ggml(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import TqdmProgress
    from whispertune.export.ggml import export_ggml

    opts = options.from_args(ExportGGMLOptions, args)
    check_output_file(opts.output)  # before minutes of loading and converting
    bars = TqdmProgress(_STAGES, quiet=args.quiet)
    try:
        with written_or_error(opts.output):
            out = export_ggml(
                opts.model,
                opts.output,
                dtype=opts.dtype,
                quantize=opts.quantize,
                force=opts.force,
                verify=opts.verify,
                progress=bars,
            )
    finally:
        bars.close()
    label = opts.quantize or opts.dtype
    print(f"GGML model ({label}, {out.stat().st_size / 1e6:.1f} MB): {out}")
    return 0
