"""CLI: ``whispertune corpus transcribe|evaluate`` -> whispertune.corpus (Ray Data jobs)."""

from __future__ import annotations

import argparse
import json
import sys

from whispertune import options
from whispertune.cli._command import add_command, add_group, needs_extra
from whispertune.corpus import CorpusEvaluateOptions, CorpusTranscribeOptions

TRANSCRIBE = """\
Transcribe many audio files (folders, globs, manifests) on Ray Data into a training manifest.

Each Ray actor loads the model once (a transformers checkpoint or adapter is converted to
CTranslate2 once, on this machine, before the job) and transcribes files one after the other
exactly as 'whispertune transcribe' does. Rows go to shards under --output as they finish;
manifest.jsonl is written when every file is done. Run the same command again to resume:
files in finished shards (and files recorded as errors) are skipped.

Without --address a local Ray instance with every CPU of this machine is started; with
--address auto (or ray://head:10001) the job runs on that cluster: audio paths must then be
readable on every node (shared storage), the output folder is written by this machine.
See docs/corpus.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(
        sub,
        "corpus",
        help="transcribe or evaluate large corpora on Ray (local or a cluster)",
        description="Corpus jobs on Ray Data (needs the 'corpus' extra: "
        "pip install 'whispertune[corpus]').",
    )
    add_command(
        group,
        "transcribe",
        CorpusTranscribeOptions,
        _transcribe,
        help="transcribe files, folders, globs or manifests into a resumable manifest",
        description=TRANSCRIBE,
        config_file=True,
        raw_description=True,
    )
    p = add_command(
        group,
        "evaluate",
        CorpusEvaluateOptions,
        _evaluate,
        help="score a model on a large manifest on Ray (same report as 'evaluate')",
        description="'whispertune evaluate' spread over Ray actors: each loads the model once "
        "and scores batches of the manifest; the CER/WER, counts and per-utterance output are "
        "those of 'whispertune evaluate'.",
        config_file=True,
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _require_ray() -> None:
    with needs_extra("corpus", "whispertune corpus"):
        import ray.data  # noqa: F401


def _transcribe(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import progress_bar
    from whispertune.corpus import transcribe_corpus

    opts = options.from_args(CorpusTranscribeOptions, args)
    _require_ray()
    with progress_bar("transcribing files", quiet=args.quiet) as progress:
        result = transcribe_corpus(opts, progress=progress)
    for error in result.errors:
        print(f"error: {error['path']}: {error['error']}", file=sys.stderr)
    hours = result.audio_seconds / 3600
    print(
        f"{result.files} files: {result.transcribed} transcribed now, "
        f"{result.skipped} done before, {result.failed} failed"
        + (f" ({result.failed_before} failed before)" if result.failed_before else "")
        + "; "
        f"{hours:.3f} h of audio in {result.wall_seconds:.1f} s on {result.actors} actor(s)"
    )
    if result.manifest is not None:
        print(f"manifest: {result.manifest}")
    else:
        print(f"shards: {result.output} (run again to finish the rest)")
    return 2 if result.failed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from whispertune.cli._progress import progress_bar
    from whispertune.cli.evaluate import print_report
    from whispertune.corpus import evaluate_corpus

    opts = options.from_args(CorpusEvaluateOptions, args)
    _require_ray()
    with progress_bar("evaluating", quiet=args.quiet) as progress:
        report = evaluate_corpus(opts, progress=progress)
    if args.json:
        print(json.dumps(report.summary(), ensure_ascii=False, indent=2))
    else:
        print_report(report)
        if opts.output:
            print(f"per-utterance results (worst first): {opts.output}")
    return 0
