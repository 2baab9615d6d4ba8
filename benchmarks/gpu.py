"""On a GPU: ``whispertune evaluate --device cuda`` against faster-whisper's transcribe loop on
the same GPU (same CTranslate2 weights, same clips, beam 5, language given), and the default
fine-tune's wall time.

    python benchmarks/gpu.py [--model builtin:base] [--device cuda]
                             [--compute-types float16,int8_float16] [--train MANIFEST]

Clips: the bundled Mandarin sample (56 AISHELL test clips, 309 s). One warm-up per runner,
then one timed pass; timing starts after the model is loaded. The peer's CER is scored with
the same scorer as ours (whispertune.evaluate's normalisation: punctuation removed,
traditional -> simplified). ``--train`` also times ``whispertune train`` with its defaults on
that manifest (the recipe: ../shared/data/zh W0121-W0440, 320 clips).

It ran on an H200 in a session that had one, with the packages that machine had (CUDA 13
libraries; CTranslate2 4.8.5's wheel wants libcublas.so.12, which was linked to
libcublas.so.13). Figures: docs/benchmarks.md, "On a GPU".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src/whispertune/samples/aishell_s0150/test.jsonl"


def _clips() -> tuple[list[str], list[str], float]:
    lines = [json.loads(x) for x in SAMPLE.read_text(encoding="utf-8").splitlines() if x]
    paths = [str(SAMPLE.parent / x["audio"]["path"]) for x in lines]
    return paths, [x["sentence"] for x in lines], sum(x.get("duration", 0.0) for x in lines)


def faster_whisper_loop(model_dir: str, device: str, compute_type: str) -> dict:
    from faster_whisper import WhisperModel

    from whispertune.evaluate import score_pairs
    from whispertune.text import normalize

    paths, refs, audio = _clips()
    model = WhisperModel(model_dir, device=device, compute_type=compute_type)
    list(model.transcribe(paths[0], language="zh", beam_size=5)[0])  # warm-up
    start = time.perf_counter()
    hyps = []
    for p in paths:
        segments, _ = model.transcribe(p, language="zh", beam_size=5)
        hyps.append("".join(s.text for s in segments))
    seconds = time.perf_counter() - start
    refs, hyps = [normalize(x) for x in refs], [normalize(x) for x in hyps]
    subs, dels, ins, n, _ = score_pairs(refs, hyps, "cer")  # Mandarin: CER, our scorer
    return {
        "run": f"faster-whisper loop {compute_type}",
        "seconds": seconds,
        "clips": len(paths),
        "audio": audio,
        "error_rate": (subs + dels + ins) / n,
    }


def whispertune_evaluate(model: str, device: str, compute_type: str, **options) -> dict:
    from whispertune import api

    with api.load_model(model, device=device, compute_type=compute_type) as m:
        m.evaluate(str(SAMPLE), limit=2, language="zh", **options)  # warm-up
        start = time.perf_counter()
        report = m.evaluate(str(SAMPLE), language="zh", **options)
        seconds = time.perf_counter() - start
    flags = " ".join(
        f"--{k.replace('_', '-')}" if v is True else f"--no-{k.replace('_', '-')}"
        for k, v in options.items()
    )
    return {
        "run": f"whispertune evaluate {compute_type} {flags}".strip(),
        "seconds": seconds,
        "clips": report.clips,
        "audio": report.audio_seconds,
        "error_rate": report.error_rate,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:base")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--compute-types", default="float16,int8_float16")
    ap.add_argument("--train", type=Path, help="also time the default fine-tune on this")
    args = ap.parse_args()
    from whispertune.backends.ct2 import ct2_model_dir
    from whispertune.models.sources import resolve

    model_dir = str(ct2_model_dir(resolve(args.model)))
    rows = []
    for ct in args.compute_types.split(","):
        runs = [
            lambda ct=ct: faster_whisper_loop(model_dir, args.device, ct),
            lambda ct=ct: whispertune_evaluate(args.model, args.device, ct, rescore=False),
            lambda ct=ct: whispertune_evaluate(args.model, args.device, ct),
            lambda ct=ct: whispertune_evaluate(
                args.model, args.device, ct, rescore=False, pack=True
            ),
        ]
        peer = None
        for run in runs:
            try:
                row = run()
            except Exception as e:  # noqa: BLE001 - a missing package fails one row, not all
                print(f"  failed: {e!r}", file=sys.stderr)
                continue
            peer = peer or row["seconds"]
            row["ratio"] = peer / row["seconds"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{'runner':58} {'clips/s':>8} {'RTF':>7} {'CER %':>6} {'x peer':>7}")
    for r in rows:
        print(
            f"{r['run']:58} {r['clips'] / r['seconds']:8.2f} {r['seconds'] / r['audio']:7.4f} "
            f"{100 * r['error_rate']:6.2f} {r['ratio']:7.2f}"
        )
    if args.train:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "whispertune",
                "train",
                "--model",
                args.model,
                "--train",
                str(args.train),
                "--language",
                "Chinese",
                "--output",
                "/tmp/gpu-bench-run",
                "--force",
            ],
            check=True,
        )
        print(f"default fine-tune on {args.train}: {time.perf_counter() - start:.0f} s wall")


if __name__ == "__main__":
    main()
