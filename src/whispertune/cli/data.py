"""CLI: ``whispertune data ...``: check, describe, split and create manifests.

Each sub-command's options are the dataclass next to its library function; this module only
parses them, calls the function and prints what it returns.
"""

from __future__ import annotations

import argparse
import json

from whispertune.cli import data_aishell
from whispertune.cli._command import add_command, add_group, add_partial_audio_flag
from whispertune.options import from_args


def _validate(args: argparse.Namespace) -> int:
    from whispertune.data.validate import ValidateOptions, validate_manifest

    options = from_args(ValidateOptions, args)
    report = validate_manifest(options.manifest, options)
    for problem in report.problems:
        print(problem)
    print(report.summary())
    if report.fixed_path is not None:
        print(
            f"wrote {report.fixed_samples} samples with measured durations to {report.fixed_path}"
        )
    return 0 if report.ok else 1


def _stats(args: argparse.Namespace) -> int:
    from whispertune.data.stats import StatsOptions, format_stats, manifest_stats

    options = from_args(StatsOptions, args)
    stats = manifest_stats(options.manifest, options.tokens, options.tokenizer_json)
    if options.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(format_stats(stats))
    return 0


def _split(args: argparse.Namespace) -> int:
    from whispertune.data.split import SplitOptions, split_manifest

    result = split_manifest(from_args(SplitOptions, args))
    print(f"train: {result.train} samples -> {result.train_path}")
    print(f"test:  {result.test} samples -> {result.test_path}")
    return 0


def _from_folder(args: argparse.Namespace) -> int:
    from whispertune.data.convert import FolderOptions, manifest_from_folder

    result = manifest_from_folder(from_args(FolderOptions, args))
    for path in result.no_transcript:
        print(f"no transcript, skipped: {path}")
    for message in result.unreadable:
        print(f"unreadable, skipped: {message}")
    print(f"wrote {result.written} samples to {result.output}")
    if result.no_transcript:
        print(f"{len(result.no_transcript)} audio files without a transcript were skipped")
    if result.unreadable:
        print(f"{len(result.unreadable)} unreadable audio files were skipped")
    if result.unused_transcripts:
        print(f"{result.unused_transcripts} transcript lines have no audio file")
    return 0


def _from_tsv(args: argparse.Namespace) -> int:
    from whispertune.data.convert import TableOptions, manifest_from_table

    result = manifest_from_table(from_args(TableOptions, args))
    for message in result.skipped:
        print(message)
    print(f"wrote {result.written} of {result.rows} rows to {result.output}")
    if result.skipped:
        print(f"{len(result.skipped)} rows skipped")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from whispertune.data.convert import FolderOptions, TableOptions
    from whispertune.data.split import SplitOptions
    from whispertune.data.stats import StatsOptions
    from whispertune.data.validate import ValidateOptions

    data_sub = add_group(
        sub,
        "data",
        help="check, describe, split and create JSONL manifests",
        description="Work with JSONL manifests: one speech sample a line.",
    )

    commands = (
        (
            "validate",
            ValidateOptions,
            _validate,
            "report every problem of a manifest as file:line",
            "Check every line of a manifest (JSON, audio files and whether each ends where its "
            "header says, durations, timestamps, languages, transcript length, lines repeating "
            "an earlier line's audio) and print all problems as 'file:line: severity: "
            "message', then a summary. Exits 1 when there is any error. Audio is not decoded "
            "in full unless --decode-audio: the header and the end of each file are read.",
        ),
        (
            "stats",
            StatsOptions,
            _stats,
            "hours, clip lengths, languages and text lengths of a manifest",
            "Describe a manifest: clips, total time, duration histogram, languages, characters "
            "and tokens per clip, no-speech and timestamped samples.",
        ),
        (
            "split",
            SplitOptions,
            _split,
            "split a manifest into train and test reproducibly",
            "Split a manifest into train and test manifests with a seeded shuffle (the same "
            "seed gives the same split). Audio paths are written relative to each output.",
        ),
        (
            "from-folder",
            FolderOptions,
            _from_folder,
            "make a manifest from audio files with transcripts beside them",
            "Make a manifest from a folder of audio files (wav, flac, mp3, ogg, opus, m4a, "
            "webm), each with a same-name transcript file, or one '<id> <text>' file for all.",
        ),
        (
            "from-tsv",
            TableOptions,
            _from_tsv,
            "make a manifest from a CSV/TSV table (Common Voice style)",
            "Make a manifest from a CSV/TSV table with a header row, such as Common Voice's "
            "path/sentence/locale TSVs. Rows that cannot be used are listed with their line.",
        ),
    )
    for name, options_cls, func, short, long in commands:
        parser = add_command(data_sub, name, options_cls, func, help=short, description=long)
        if name == "validate":
            add_partial_audio_flag(parser)
    data_aishell.register(data_sub)
