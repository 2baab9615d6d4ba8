"""CLI: ``whispertune evaluate`` -> whispertune.evaluate.evaluate."""

from __future__ import annotations

import argparse
import json
import sys

from whispertune import options
from whispertune.cli._command import add_command
from whispertune.evaluate import EvaluateOptions, EvaluationReport, ReportNotWritten


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "evaluate",
        EvaluateOptions,
        run,
        help="score a model on a manifest (CER/WER)",
        description="Decode every clip of a manifest and print CER or WER with substitutions, "
        "deletions, insertions and speed. Texts are normalized first (punctuation removed, "
        "traditional->simplified Chinese, Whisper's English normalizer for WER).",
        config_file=True,
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def print_report(report: EvaluationReport) -> None:
    name = report.metric.upper()
    print(
        f"{name}: {report.error_rate * 100:.2f} %  "
        f"(S {report.substitutions}, D {report.deletions}, I {report.insertions}, "
        f"N {report.reference_length})"
    )
    print(
        f"clips: {report.clips}, audio: {report.audio_seconds:.1f} s, "
        f"time: {report.wall_seconds:.1f} s, {report.clips_per_second:.2f} clips/s, "
        f"RTF {report.rtf:.3f}"
    )


def run(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import progress_bar
    from whispertune.evaluate import evaluate

    opts = options.from_args(EvaluateOptions, args)
    unwritten = None
    with progress_bar("evaluating", quiet=args.quiet) as progress:
        try:
            report = evaluate(opts, progress=progress)
        except ReportNotWritten as e:  # the figures are printed all the same
            report, unwritten = e.report, e
    if args.json:
        print(json.dumps(report.summary(), ensure_ascii=False, indent=2))
    else:
        print_report(report)
        if opts.output and unwritten is None:
            print(f"per-utterance results (worst first): {opts.output}")
    if unwritten is not None:
        print(f"error: {unwritten}", file=sys.stderr)
        return 1
    return 0
