"""CLI: ``whispertune transcribe`` -> whispertune.transcribe.transcribe."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from whispertune import options
from whispertune.formats import format_timestamp
from whispertune.transcribe import Segment, TranscribeOptions, TranscriptionInfo, transcribe

DESCRIPTION = """\
Transcribe (or translate to English) audio and video files of any length and format. Long
files are decoded in blocks, never loaded whole. Each segment is printed as it is decoded and
the results are written as txt, srt, vtt, json and tsv files.

Long audio: by default Silero VAD finds the speech and speech chunks of up to 30 s are decoded
in batches (--batch-size); silence is never shown to the model. --no-vad instead decodes
consecutive 30 s windows, each starting where the last complete sentence ended (Whisper's own
algorithm; slower, sees all audio).

Hallucination guards (defaults chosen by measurement, see the README): a window whose output
loops (gzip compression ratio > --compression-ratio-threshold) or is improbable (average
log-probability < --log-prob-threshold) is decoded again at the next --temperature; a window
the model calls no-speech (> --no-speech-threshold) with improbable text gives no text.
Text of earlier windows is not given as context by default (--condition-on-previous-text),
because one looping window then drags the next ones into the loop.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio files of any length to txt/srt/vtt/json/tsv",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_options(p, TranscribeOptions, config_file=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    opts = options.from_args(TranscribeOptions, args)
    quiet = getattr(args, "quiet", False)
    bar: tqdm | None = None
    announced: set[Path] = set()

    def progress(done: float, total: float | None) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            bar = tqdm(
                total=round(total, 1) if total else None,
                desc="transcribing",
                unit="s",
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s audio [{elapsed}<{remaining}]",
            )
        bar.update(round(done, 1) - bar.n)

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

    try:
        outcomes = transcribe(opts, progress=progress, on_segment=on_segment)
    finally:
        if bar is not None:
            bar.close()
    failed = 0
    for o in outcomes:
        if o.error:
            failed += 1
            print(f"error: {o.error}")
            continue
        assert o.result is not None
        info = o.result.info
        if o.path not in announced:
            print(f"{o.path}: no speech found ({info.duration or 0:.1f} s of audio)")
        print(f"{o.path}: wrote {', '.join(str(p) for p in o.outputs)}")
    return 2 if failed else 0
