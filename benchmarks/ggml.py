"""whisper.cpp on our GGML exports (f16, q8_0, q5_0) against our transformers fp32 greedy decode.

    python benchmarks/ggml.py [--model builtin:base] [--manifest M] [--limit N] [--threads 2]
                              [--variants f16 q8_0 q5_0] [--workdir DIR]

Exports the model once per variant (kept in --workdir, default a temporary folder), then runs
each runtime in its own process so its peak RSS is its own (model load included). Every runner
decodes the same way: greedy, no temperature fallback, no timestamps, language fixed per clip,
one clip at a time for whisper.cpp and batches of --batch-size for transformers. Timing starts
after the model is loaded and the audio decoded. Prints one row per runner: file size, RTF,
clips/s, CER, CER change against transformers, clips whose normalized text equals
transformers', and peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MANIFEST = (
    Path(__file__).resolve().parents[1] / "src/whispertune/samples/aishell_s0150/test.jsonl"
)
PEER = "transformers"


def _clips(manifest: Path, limit: int | None):
    from whispertune.audio import SAMPLE_RATE, load_audio
    from whispertune.data.manifest import read_manifest
    from whispertune.languages import language_code

    samples = read_manifest(manifest)[:limit]
    audios = [load_audio(s.audio_path, s.start_time, s.end_time) for s in samples]
    langs = [language_code(s.language) if s.language else None for s in samples]
    seconds = sum(len(a) for a in audios) / SAMPLE_RATE
    return samples, audios, langs, seconds


def _greedy_options(language: str | None):
    """Beam 1 with the hallucination guards off where DecodeOptions has them (as whisper.cpp)."""
    from whispertune.backends.base import DecodeOptions

    off = {
        "temperatures": [0.0],
        "compression_ratio_threshold": None,
        "log_prob_threshold": None,
        "no_speech_threshold": None,
    }
    names = {f.name for f in dataclasses.fields(DecodeOptions)}
    return DecodeOptions(
        language=language, beam_size=1, **{k: v for k, v in off.items() if k in names}
    )


def run_one(
    runner: str, model: str, manifest: Path, limit: int | None, threads: int, batch: int
) -> dict:
    """Decode the manifest with one runner (called in a child process); texts and timings."""
    samples, audios, langs, seconds = _clips(manifest, limit)
    if runner == PEER:
        import torch

        from whispertune.backends import create_transcriber

        torch.set_num_threads(threads)
        tr = create_transcriber(model, "transformers", threads=threads)
        start = time.perf_counter()
        texts: list[str] = []
        for i in range(0, len(audios), batch):
            chunk_langs = langs[i : i + batch]
            opts = _greedy_options(chunk_langs[0] if len(set(chunk_langs)) == 1 else None)
            texts += [t.text for t in tr.transcribe_clips(audios[i : i + batch], opts, chunk_langs)]
    else:
        from whispertune.export.ggml import WhisperCpp

        cpp = WhisperCpp(runner, threads=threads)
        start = time.perf_counter()
        texts = [cpp.transcribe(a, lang).text for a, lang in zip(audios, langs, strict=True)]
    wall = time.perf_counter() - start
    return {
        "texts": texts,
        "wall": wall,
        "seconds": seconds,
        "clips": len(samples),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(args: argparse.Namespace, runner: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--run-one",
        runner,
        "--model",
        args.model,
        "--manifest",
        str(args.manifest),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="builtin:base", help="model to export and compare")
    p.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    p.add_argument("--limit", type=int, default=None, help="first N clips only")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--batch-size", type=int, default=8, help="transformers batch")
    p.add_argument(
        "--variants",
        nargs="+",
        default=["f16", "q8_0", "q5_0"],
        choices=["f16", "f32", "q8_0", "q5_0", "q4_0"],
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep the GGML files here")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.run_one:
        result = run_one(
            args.run_one, args.model, args.manifest, args.limit, args.threads, args.batch_size
        )
        print(json.dumps(result, ensure_ascii=False))
        return

    from whispertune.evaluate import score_pairs
    from whispertune.export.ggml import export_ggml
    from whispertune.text import normalize

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ggml-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for variant in args.variants:
        path = workdir / f"model-{variant}.bin"
        if not path.is_file():
            start = time.perf_counter()
            quantize = None if variant in ("f16", "f32") else variant
            dtype = variant if variant in ("f16", "f32") else "f16"
            export_ggml(args.model, path, dtype=dtype, quantize=quantize)
            print(f"exported {variant} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        files[variant] = path

    from whispertune.data.manifest import read_manifest

    samples = read_manifest(args.manifest)[: args.limit]
    refs = [normalize(s.text) for s in samples]
    rows: list[tuple[str, float | None, dict]] = []
    peer = _child(args, PEER)
    rows.append((f"transformers fp32 greedy (batch {args.batch_size})", None, peer))
    for variant, path in files.items():
        rows.append((f"whisper.cpp {variant}", path.stat().st_size / 1e6, _child(args, str(path))))

    def cer(texts: list[str]) -> float:
        s, d, i, n, _ = score_pairs(refs, [normalize(t) for t in texts], "cer")
        return (s + d + i) / n

    peer_cer = cer(peer["texts"])
    peer_norm = [normalize(t) for t in peer["texts"]]
    print(
        f"model {args.model}, manifest {args.manifest} ({len(samples)} clips, "
        f"{peer['seconds']:.1f} s), threads {args.threads}, greedy, no fallback"
    )
    print(
        "| runner | file MB | RTF | clips/s | CER % | ΔCER vs transformers | "
        "same text as transformers | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, size, r in rows:
        c = cer(r["texts"])
        same = sum(normalize(t) == pn for t, pn in zip(r["texts"], peer_norm, strict=True))
        print(
            f"| {name} | {'-' if size is None else f'{size:.1f}'} | {r['wall'] / r['seconds']:.3f}"
            f" | {r['clips'] / r['wall']:.2f} | {c * 100:.2f} | {(c - peer_cer) * 100:+.2f} | "
            f"{same}/{r['clips']} | {r['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
