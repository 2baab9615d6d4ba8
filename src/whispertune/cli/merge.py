"""CLI: ``whispertune merge`` -> whispertune.merge.merge_adapter."""

from __future__ import annotations

import argparse

from whispertune import options
from whispertune.cli._command import add_command
from whispertune.merge import MergeOptions


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "merge",
        MergeOptions,
        run,
        help="merge a LoRA/AdaLoRA adapter into a plain transformers checkpoint",
        description="Merge an adapter (e.g. runs/x/best) into its base model and write a full "
        "checkpoint with tokenizer, preprocessor and generation config.",
        config_file=True,
    )


def run(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import TqdmProgress
    from whispertune.cli.export import written_or_error
    from whispertune.merge import merge_adapter

    opts = options.from_args(MergeOptions, args)
    bars = TqdmProgress({"merge": "merging", "write": "writing"}, quiet=args.quiet)
    try:
        with written_or_error(opts.output):
            out = merge_adapter(
                opts.adapter, opts.output, base=opts.base_model, force=opts.force, progress=bars
            )
    finally:
        bars.close()
    print(f"merged model: {out}")
    return 0
