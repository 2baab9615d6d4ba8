"""CLI: ``whispertune transcribe`` -> whispertune.transcribe.transcribe."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from whispertune import options
from whispertune.formats import format_timestamp
from whispertune.transcribe import Segment, TranscribeOptions, TranscriptionInfo, transcribe

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

Why these defaults (measured with the built-in base on a 3.6-min Mandarin recording, a 5.7-min
English one, and 10-30 s of digital silence and of -50 dBFS white noise):
  --vad: same accuracy as --no-vad (CER 18.4 vs 18.2 %, WER 5.2 vs 5.5 %), about 1.8x
    faster (RTF 0.038 vs 0.07 on 2 cores), and no text at all on silence or noise; --no-vad
    without its VAD gate (--no-silence-gate) writes "You" on silence and "Thanks for
    watching." on noise.
  guards (--temperature 0 0.2 .. 1, --compression-ratio-threshold 2.4, --log-prob-threshold
    -1, --no-speech-threshold 0.6; Whisper's values): on speech they never fired; on silence
    and noise they turn every Mandarin loop ("你别忘了你别忘了...") into empty output. Stricter
    no-speech values are unsafe: real Mandarin windows reach a no-speech probability of 0.93
    (their log-probability, -0.5, is what keeps them).
  --no-condition-on-previous-text: conditioning lowered CER on clean speech (15.5 vs 18.2 %)
    but made the model repeat earlier sentences over a minute of noise (34 invented
    characters vs none), the failure mode that is hardest to notice.
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
            print(f"error: {o.error}", file=sys.stderr)
            continue
        assert o.result is not None
        info = o.result.info
        if o.path not in announced:
            print(f"{o.path}: no speech found ({info.duration or 0:.1f} s of audio)")
        print(f"{o.path}: wrote {', '.join(str(p) for p in o.outputs)}")
    return 2 if failed else 0
