"""CLI: ``whispertune transcribe`` -> whispertune.transcribe.transcribe_files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from whispertune import options
from whispertune.cli._command import add_command
from whispertune.transcribe import TranscribeOptions

DESCRIPTION = """\
Transcribe (or translate to English) audio and video files of any length and format. Long
files are decoded in blocks, never loaded whole. Each segment is printed as it is decoded and
the results are written as txt, srt, vtt, json and tsv files (--format, --output-dir).

Long audio: by default Silero VAD finds the speech, speech regions are merged into spans of up
to 30 s (pauses kept) and spans are decoded in batches (--batch-size), with timestamps; silence
is never shown to the model. --no-vad decodes consecutive 30 s windows instead, each starting
where the last complete sentence ended (Whisper's own algorithm: one window at a time, sees
all the audio). Either way a segment start that Whisper put in the pause before a sentence is
moved onto the speech (VAD), and a window whose output stops before its speech does is decoded
again from there.

Why these defaults (--vad, Whisper's guards, no conditioning on previous text), with the
measurements: see docs/transcription.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "transcribe",
        TranscribeOptions,
        run,
        help="transcribe audio files of any length to txt/srt/vtt/json/tsv",
        description=DESCRIPTION,
        config_file=True,
        raw_description=True,
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from whispertune.cli._progress import progress_bar
    from whispertune.formats import format_timestamp, to_txt
    from whispertune.transcribe import Segment, TranscriptionInfo, transcribe_files

    opts = options.from_args(TranscribeOptions, args)
    quiet = getattr(args, "quiet", False)
    announced: set[Path] = set()

    def on_segment(path: Path, info: TranscriptionInfo, seg: Segment) -> None:
        if path not in announced:
            announced.add(path)
            prob = (
                f" (probability {info.language_probability:.2f})"
                if info.language_probability is not None
                else ""
            )
            tqdm.write(f"{path}: language {info.language}{prob}")
        if not quiet:
            tqdm.write(
                f"[{format_timestamp(seg.start)} --> {format_timestamp(seg.end)}] {seg.text}"
            )

    with progress_bar("transcribing", quiet=quiet) as progress:
        outcomes = transcribe_files(opts, progress=progress, on_segment=on_segment)
    failed = []
    for o in outcomes:
        if o.error:
            failed.append(o.path)
            print(f"error: {o.error}", file=sys.stderr)
            if o.result is not None:  # decoded but not written: the text is not lost
                print(f"{o.path}: its text, not written to any file:")
                print(to_txt(o.result.segments), end="")
            continue
        assert o.result is not None
        info = o.result.info
        if o.path not in announced:
            print(f"{o.path}: no speech found ({info.duration or 0:.1f} s of audio)")
        print(f"{o.path}: wrote {', '.join(str(p) for p in o.outputs)}")
    if failed:
        names = ", ".join(str(p) for p in failed)
        print(f"error: {len(failed)} of {len(outcomes)} file(s) failed: {names}", file=sys.stderr)
        return 2
    return 0
