"""Audio hours per hour of ``corpus transcribe`` on Ray (1 and 2 actors) against the
single-process ``Model.transcribe`` loop (what ``whispertune transcribe`` runs), same files,
same run.

    python benchmarks/corpus.py [--model builtin:base] [--files 20] [--cpus 2] [--language zh]

Files: the first --files clips of the shared AISHELL set (``../shared/data/zh``), else the
packaged ones. One local Ray instance (--cpus CPUs) is started first and shared by the Ray
rows; its start-up is printed apart. A Ray row's time is the whole job as a user waits for
it with Ray up: actors started, the model loaded once per actor, every file decoded, shards
written. The single-process row's time includes its one model load too. The last column
counts files whose text equals the single-process text. The machine's other load is not
controlled: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared/data/zh/aishell_s0150/clips"
PACKAGED = REPO / "src/whispertune/samples/aishell_s0150/clips"


def _files(n: int) -> list[Path]:
    found = sorted(SHARED.glob("*.opus")) or sorted(PACKAGED.glob("*.opus"))
    return found[:n]


def _single(model: str, files: list[Path], threads: int, language: str) -> tuple[float, dict]:
    from whispertune import api

    start = time.perf_counter()
    texts = {}
    with api.load_model(model, threads=threads) as m:
        for f in files:
            texts[str(f.resolve())] = m.transcribe(f, language=language).result().text
    return time.perf_counter() - start, texts


def _ray(model: str, files: list[Path], actors: int, threads: int, language: str):
    from whispertune.corpus import CorpusTranscribeOptions, transcribe_corpus
    from whispertune.corpus.cluster import ClusterOptions
    from whispertune.options import build

    with tempfile.TemporaryDirectory() as out:
        opts = build(
            CorpusTranscribeOptions,
            {
                "inputs": [str(f) for f in files],
                "output": out,
                "model": model,
                "language": language,
            },
            source="options",
        )
        opts.cluster = ClusterOptions(actors=actors, threads_per_actor=threads)
        result = transcribe_corpus(opts)
        rows = [json.loads(x) for x in result.manifest.read_text("utf-8").splitlines()]
    return result.wall_seconds, {r["audio"]["path"]: r["sentence"] for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:base")
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--language", default="zh")
    args = parser.parse_args()

    import ray

    from whispertune.audio import AudioStream

    files = _files(args.files)
    audio = sum(AudioStream(f).duration or 0.0 for f in files)
    print(f"{len(files)} files, {audio:.1f} s of audio, model {args.model}, {args.cpus} CPUs")

    t = time.perf_counter()
    ray.init(
        num_cpus=args.cpus,
        object_store_memory=200 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    print(f"ray start-up (once, not in the rows): {time.perf_counter() - t:.1f} s")
    rows = []
    try:
        seconds, reference = _single(args.model, files, args.cpus, args.language)
        rows.append((f"single process, {args.cpus} threads", seconds, reference))
        for actors in (1, 2):
            threads = max(1, args.cpus // actors)
            seconds, texts = _ray(args.model, files, actors, threads, args.language)
            rows.append((f"ray, {actors} actor(s) x {threads} thread(s)", seconds, texts))
    finally:
        ray.shutdown()

    base = rows[0][1]
    print(f"\n| {'run':<32} | {'wall s':>7} | {'audio h/h':>9} | {'vs single':>9} | same text |")
    print(f"|{'-' * 34}|{'-' * 9}|{'-' * 11}|{'-' * 11}|-----------|")
    for name, seconds, texts in rows:
        same = sum(texts.get(k) == v for k, v in reference.items())
        print(
            f"| {name:<32} | {seconds:>7.1f} | {audio / seconds:>9.1f} | "
            f"{base / seconds:>8.2f}x | {same:>4}/{len(reference):<4} |"
        )


if __name__ == "__main__":
    main()
