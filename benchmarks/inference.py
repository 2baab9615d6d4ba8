"""Dataset evaluation speed and accuracy: whispertune's backends against faster-whisper's own
``WhisperModel.transcribe`` loop, same weights, same audio, same beam size, same threads.

    python benchmarks/inference.py [--manifest M] [--limit N] [--beam-size 5] [--threads 2]

Prints one row per runner (clips/s, RTF, CER, peak RSS growth) and ratios to faster-whisper.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from whispertune import options
from whispertune.audio import SAMPLE_RATE, load_audio
from whispertune.data.manifest import read_manifest
from whispertune.evaluate import EvaluateOptions, evaluate, score_pairs
from whispertune.models.builtin import builtin_ct2_dir
from whispertune.text import normalize

DEFAULT_MANIFEST = (
    Path(__file__).resolve().parents[1] / "src/whispertune/samples/aishell_s0150/test.jsonl"
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_faster_whisper(manifest: Path, limit: int | None, beam: int, threads: int) -> dict:
    from faster_whisper import WhisperModel

    samples = read_manifest(manifest)[:limit]
    model = WhisperModel(
        str(builtin_ct2_dir("base")), device="cpu", compute_type="int8", cpu_threads=threads
    )
    audios = [load_audio(s.audio_path) for s in samples]
    start = time.perf_counter()
    hyps = []
    for audio in audios:
        segments, _ = model.transcribe(
            audio, language="zh", beam_size=beam, condition_on_previous_text=False
        )
        hyps.append("".join(seg.text for seg in segments))
    wall = time.perf_counter() - start
    refs = [normalize(s.text) for s in samples]
    s, d, i, n, _ = score_pairs(refs, [normalize(h) for h in hyps], "cer")
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    return {"clips_s": len(samples) / wall, "rtf": wall / seconds, "cer": (s + d + i) / n}


def run_ours(
    manifest: Path,
    limit: int | None,
    beam: int,
    threads: int,
    backend: str,
    compute_type: str,
    batch: int,
) -> dict:
    opts = options.build(
        EvaluateOptions,
        {
            "manifest": manifest,
            "limit": limit,
            "beam_size": beam,
            "threads": threads,
            "backend": backend,
            "compute_type": compute_type,
            "batch_size": batch,
            "language": "zh",
        },
    )
    r = evaluate(opts)
    return {"clips_s": r.clips_per_second, "rtf": r.rtf, "cer": r.error_rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    runners = {
        "faster-whisper transcribe loop (int8)": lambda: run_faster_whisper(
            args.manifest, args.limit, args.beam_size, args.threads
        ),
        f"whispertune ct2 batched (int8, batch {args.batch_size})": lambda: run_ours(
            args.manifest, args.limit, args.beam_size, args.threads, "ct2", "int8", args.batch_size
        ),
        "whispertune transformers (fp32)": lambda: run_ours(
            args.manifest,
            args.limit,
            args.beam_size,
            args.threads,
            "transformers",
            "float32",
            args.batch_size,
        ),
    }
    rows = []
    for name, fn in runners.items():
        before = peak_rss_mb()
        result = fn()
        result["rss_mb"] = max(0.0, peak_rss_mb() - before)
        rows.append((name, result))
    peer = rows[0][1]
    print(f"manifest: {args.manifest}  beam {args.beam_size}  threads {args.threads}")
    print(f"| {'runner':48s} | clips/s | x peer | RTF   | CER %  | peak RSS +MB |")
    print(f"|{'-' * 50}|---------|--------|-------|--------|--------------|")
    for name, r in rows:
        print(
            f"| {name:48s} | {r['clips_s']:7.2f} | {r['clips_s'] / peer['clips_s']:6.2f} | "
            f"{r['rtf']:.3f} | {r['cer'] * 100:6.2f} | {r['rss_mb']:12.0f} |"
        )
    print("peak RSS growth is cumulative in one process: later rows only show what they add.")


if __name__ == "__main__":
    main()
