"""CLI: ``whispertune data aishell`` — AISHELL-1 into manifests (logic in whispertune.data.aishell).

Kept out of ``cli/data.py`` so the ``data`` group only has to call :func:`register`.
"""

from __future__ import annotations

import argparse

from whispertune.cli._command import add_command
from whispertune.options import from_args

_DESCRIPTION = """\
Prepare AISHELL-1 (OpenSLR 33, 178 h of Mandarin read speech, Apache-2.0) for fine-tuning.

Reads data_aishell.tgz and its nested per-speaker wav/SPEAKER.tar.gz as streams (no full
unpacking, little RAM) and writes OUT/wav/{train,dev,test}/SPEAKER/ID.wav and the manifests
OUT/train.jsonl (train + dev unless --no-dev-in-train), OUT/dev.jsonl and OUT/test.jsonl, with
the transcript's word-segmentation spaces removed and each clip's measured duration.

Without --archive the archive (about 15 GB) is downloaded into OUT first, resumably; on a
machine without internet, download it elsewhere and pass --archive. An interrupted run is
resumed by running the same command again: finished speakers are skipped. A damaged archive
(gzip CRC, member sizes) is an error naming the damaged part; once it is repaired or replaced,
the same command reads it again. The archive you pass is only read, never changed or deleted.
"""


def register(data_sub: argparse._SubParsersAction) -> None:
    """Add the ``aishell`` subcommand to the ``whispertune data`` subparsers."""
    from whispertune.data.aishell import AishellOptions

    add_command(
        data_sub,
        "aishell",
        AishellOptions,
        run,
        help="prepare AISHELL-1 (OpenSLR 33) as train/dev/test manifests",
        description=_DESCRIPTION,
        raw_description=True,
        config_file=True,
    )


def _duration(hours: float) -> str:
    return f"{hours:.2f} h" if hours >= 1 else f"{hours * 60:.1f} min"


def run(args: argparse.Namespace) -> int:
    """Prepare, then print where everything went (progress and warnings go to stderr)."""
    from whispertune.data.aishell import AishellOptions, prepare_aishell

    result = prepare_aishell(from_args(AishellOptions, args))
    for split in ("train", "dev", "test"):
        path = getattr(result, f"{split}_manifest")
        count = getattr(result, split)
        print(f"{split:5s} {count:6d} utterances  {_duration(result.hours[split]):>9s}  {path}")
    resumed = f", {result.speakers_resumed} already done" if result.speakers_resumed else ""
    print(f"speakers {result.speakers}{resumed}; WAV files written {result.files_written}")
    if result.missing_transcript:
        print(
            f"left out {result.missing_transcript} utterance(s) without a transcript "
            f"(see {result.out / 'missing_transcript.txt'})"
        )
    return 0
