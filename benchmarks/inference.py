"""Inference speed and accuracy: whispertune against faster-whisper, transformers and
whisper.cpp — same weights (built-in whisper-base), same audio, beam 5, same CPU threads.

    python benchmarks/inference.py [--part dataset|longform|all] [--threads 2]
                                   [--model builtin:base] [--runs 1] [--only NAME ...]

Dataset part: the AISHELL test split (the last 56 lines of
../shared/data/zh/aishell_s0150/manifest.jsonl, W0441-W0496; the bundled sample otherwise),
language given (zh), one row per runner: clips/s, RTF, CER, peak RSS, and the ratio of clips/s
to faster-whisper's ``WhisperModel.transcribe`` loop (the peer). Our rows: ``evaluate`` as it
decodes Mandarin by default (rescored), with ``--no-rescore``, and with rescoring as it was
before it pruned candidates; on a CPU with native bf16 the first two again with CTranslate2's
int8 encoder (the bf16 encoder's peer); the lines under the table are what rescoring adds to
the time: the two rows compared, and rescoring's own CPU time within the rescored run (the
threads' CPU while they choose, score and load for rescoring) against the rest of that run's.
The rows run minutes apart, and on a shared machine the load moves between them by more than
rescoring costs (5-39 % in one evening's eighteen runs of one code); the second figure is
measured under one load, stayed within 18-20 % in twelve runs of that code.

Long-form part: ../shared/data/longform (3.6 min of Mandarin): our two long-form modes against
faster-whisper's sequential ``transcribe`` and its ``BatchedInferencePipeline``: RTF, CER of
the whole text, share of segment starts within 0.5 s of a true sentence start, peak RSS.

On a shared machine one run's ratios move by several points with the load of the other
jobs: ``--runs 3`` or more gives each run's and their median (every other run in the reverse
order of runners).

Every runner runs in its own process (so peak RSS is its own, model included); timing starts
after the model is loaded and stops when the last text is out. Audio decoding is inside the
timing for every runner, as each does it in normal use (faster-whisper: PyAV; ours: soundfile).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BUNDLED = REPO / "src/whispertune/samples/aishell_s0150/test.jsonl"
LONGFORM = SHARED / "longform" / "manifest.jsonl"
PEER = "faster-whisper transcribe loop"
RESCORED = "whispertune ct2 batched (evaluate: Mandarin rescored, the default)"
PLAIN = "whispertune ct2 batched --no-rescore"
INT8_ENCODER = ", CTranslate2's int8 encoder"
LONG_PEER = "faster-whisper BatchedInferencePipeline"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


CPU = {"start": 0.0, "seconds": 0.0}


def clock_start() -> float:
    """Start the timed region: wall clock, and this process's CPU time (all threads). CPU
    time is the figure to compare when other jobs share the cores: wall time then depends on
    how much of the machine the runner happened to get."""
    CPU["start"] = cpu_seconds()
    return time.perf_counter()


def clock_stop(start: float) -> float:
    CPU["seconds"] = cpu_seconds() - CPU["start"]
    return time.perf_counter() - start


def test_manifest(workdir: Path) -> Path:
    """The AISHELL test split as its own manifest (absolute audio paths)."""
    full = SHARED / "zh/aishell_s0150/manifest.jsonl"
    if not full.is_file():
        return BUNDLED
    lines = full.read_text(encoding="utf-8").splitlines()[-56:]
    out = workdir / "aishell_test.jsonl"
    rows = []
    for line in lines:
        row = json.loads(line)
        row["audio"]["path"] = str((full.parent / row["audio"]["path"]).resolve())
        rows.append(json.dumps(row, ensure_ascii=False))
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


def cer(refs: list[str], hyps: list[str]) -> float:
    from whispertune.evaluate import score_pairs
    from whispertune.text import normalize

    s, d, i, n, _ = score_pairs([normalize(r) for r in refs], [normalize(h) for h in hyps], "cer")
    return (s + d + i) / max(1, n)


# -- dataset runners (each in a child process) --------------------------------------------------


def _samples(manifest: Path):
    from whispertune.data.manifest import read_manifest

    return read_manifest(manifest)


def ds_faster_whisper(manifest: Path, model_dir: str, threads: int, preload: bool) -> dict:
    """faster-whisper as a user runs it over a data set: one transcribe() per file."""
    from faster_whisper import WhisperModel

    from whispertune.audio import load_audio

    samples = _samples(manifest)
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    inputs = [load_audio(s.audio_path) if preload else str(s.audio_path) for s in samples]
    start = clock_start()
    hyps = []
    for audio in inputs:
        segments, _ = model.transcribe(audio, language="zh", beam_size=5)
        hyps.append("".join(seg.text for seg in segments))
    wall = clock_stop(start)
    return {"wall": wall, "hyps": hyps, "refs": [s.text for s in samples]}


def ds_ours(
    manifest: Path,
    model: str,
    threads: int,
    every_candidate: bool = False,
    int8_encoder: bool = False,
    **extra,
) -> dict:
    """``evaluate`` as a user runs it; ``extra`` are its options (``rescore=False``...).
    ``every_candidate``: rescoring as it was before it pruned (every candidate of a clip
    scored in one align call), for the before/after ratio in one run. ``int8_encoder``:
    CTranslate2's int8 encoder where the CPU would take the bf16 one (as before it), for the
    same ratio."""
    from whispertune import api

    if int8_encoder:
        from whispertune.backends import ct2

        ct2.cpu_has_bf16 = lambda: False

    if every_candidate:
        from whispertune.backends.ct2 import CT2Transcriber

        CT2Transcriber.scores_per_token = False  # rescoring then scores every candidate
    values = {"language": "zh", "beam_size": 5, **extra}
    own = _time_rescoring()
    with api.load_model(model, threads=threads) as loaded:  # timed after the load, as
        clock_start()  # evaluate() times itself
        report = loaded.evaluate(manifest, **values)
        clock_stop(0.0)
    by_line = sorted(report.utterances, key=lambda u: u.line)
    return {
        "wall": report.wall_seconds,
        "hyps": [u.hyp for u in by_line],
        "refs": [u.ref for u in by_line],
        "rescoring_cpu": own["seconds"],
    }


def _time_rescoring() -> dict:
    """Count the CPU time of the threads while they rescore (each clip's choice, each
    segment's, and loading what rescoring needs), in this runner's process. Why: the rows
    with and without rescoring run minutes apart, and on a shared machine the load moves
    between them by more than rescoring costs; within one run, rescoring's own CPU against
    the rest of the run's is measured under the same load. It leaves out what rescoring
    costs the other work indirectly (the beam's five hypotheses kept, caches shared), which
    the comparison of the two rows includes."""
    import threading

    from whispertune.backends import ct2

    own = {"seconds": 0.0}
    lock = threading.Lock()

    def timed(fn):
        def wrapper(*a, **k):
            start = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    own["seconds"] += time.thread_time() - start

        return wrapper

    ct2.rescore_text = timed(ct2.rescore_text)
    ct2.rescore_segments = timed(ct2.rescore_segments)
    ct2.CT2Transcriber._load_rescoring = timed(ct2.CT2Transcriber._load_rescoring)
    return own


def ds_transformers_pipeline(
    manifest: Path, model: str, threads: int, batch: int, limit: int
) -> dict:
    """The real ``transformers.pipeline("automatic-speech-recognition")`` on the converted
    checkpoint, fp32, batched, beam 5."""
    import torch
    from transformers import pipeline

    from whispertune.audio import load_audio
    from whispertune.models.sources import resolve

    torch.set_num_threads(threads)
    samples = _samples(manifest)[:limit]
    asr = pipeline(
        "automatic-speech-recognition",
        model=str(resolve(model).hf_dir()),
        device="cpu",
        dtype=torch.float32,
    )
    if asr.tokenizer.pad_token_id is None:  # batching needs one; Whisper pads with <|endoftext|>
        asr.tokenizer.pad_token = asr.tokenizer.eos_token
    start = clock_start()
    audios = [{"raw": load_audio(s.audio_path), "sampling_rate": 16000} for s in samples]
    out = asr(
        audios,
        batch_size=batch,
        generate_kwargs={"language": "zh", "task": "transcribe", "num_beams": 5},
    )
    wall = clock_stop(start)
    return {"wall": wall, "hyps": [o["text"] for o in out], "refs": [s.text for s in samples]}


def ds_whisper_cpp(manifest: Path, model: str, threads: int, workdir: Path, limit: int) -> dict:
    """whisper.cpp (pywhispercpp) on our GGML f16 export, beam 5, one file at a time."""
    from pywhispercpp.model import Model

    from whispertune.audio import load_audio
    from whispertune.export.ggml import export_ggml

    path = workdir / "base-f16.bin"
    if not path.is_file():
        export_ggml(model, path, dtype="f16")
    cpp = Model(
        str(path),
        redirect_whispercpp_logs_to=None,
        n_threads=threads,
        print_progress=False,
        print_realtime=False,
        params_sampling_strategy=1,
        beam_search={"beam_size": 5, "patience": -1.0},
    )
    samples = _samples(manifest)
    start = clock_start()
    hyps = []
    for s in samples:
        segments = cpp.transcribe(load_audio(s.audio_path), language="zh")
        hyps.append("".join(seg.text for seg in segments))
    wall = clock_stop(start)
    return {"wall": wall, "hyps": hyps, "refs": [s.text for s in samples]}


# -- long-form runners --------------------------------------------------------------------------


def lf_faster_whisper(path: str, model_dir: str, threads: int, batched: bool) -> dict:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    start = clock_start()
    if batched:
        segments, _ = BatchedInferencePipeline(model).transcribe(
            path, language="zh", beam_size=5, batch_size=8
        )
    else:
        segments, _ = model.transcribe(path, language="zh", beam_size=5)
    segs = [(s.start, s.end, s.text) for s in segments]
    return {"wall": clock_stop(start), "segments": segs}


def lf_ours(path: str, model: str, threads: int, vad: bool) -> dict:
    from whispertune.backends import DecodeOptions, create_transcriber
    from whispertune.transcribe import LongFormOptions, Pipeline

    pipe = Pipeline(
        create_transcriber(model, "ct2", threads=threads),
        DecodeOptions(language="zh", beam_size=5),
        LongFormOptions(vad=vad),
    )
    start = clock_start()
    segs = [(s.start, s.end, s.text) for s in pipe.stream(path)]
    return {"wall": clock_stop(start), "segments": segs}


def runners(args, manifest: Path, workdir: Path) -> dict:
    from whispertune.backends.ct2 import ct2_model_dir
    from whispertune.models.sources import resolve

    model_dir = str(ct2_model_dir(resolve(args.model)))
    t = args.threads
    longform = json.loads(LONGFORM.read_text(encoding="utf-8").splitlines()[0])
    lf_path = str(LONGFORM.parent / longform["audio"]["path"])
    table = {
        "dataset": {
            PEER: lambda: ds_faster_whisper(manifest, model_dir, t, preload=False),
            PEER + " (audio preloaded)": lambda: ds_faster_whisper(manifest, model_dir, t, True),
            RESCORED: lambda: ds_ours(manifest, args.model, t),
            PLAIN: lambda: ds_ours(manifest, args.model, t, rescore=False),
            RESCORED + INT8_ENCODER: lambda: ds_ours(manifest, args.model, t, int8_encoder=True),
            PLAIN + INT8_ENCODER: lambda: ds_ours(
                manifest, args.model, t, int8_encoder=True, rescore=False
            ),
            RESCORED + ", every candidate scored (before pruning)": lambda: ds_ours(
                manifest, args.model, t, every_candidate=True
            ),
            "whispertune ct2 batched --pack": lambda: ds_ours(manifest, args.model, t, pack=True),
            f"transformers pipeline fp32 (first {args.slow_limit} clips)": lambda: (
                ds_transformers_pipeline(manifest, args.model, t, 4, args.slow_limit)
            ),
            f"whisper.cpp f16, our GGML export (first {args.slow_limit} clips)": lambda: (
                ds_whisper_cpp(manifest, args.model, t, workdir, args.slow_limit)
            ),
        },
        "longform": {
            "faster-whisper transcribe (sequential)": lambda: lf_faster_whisper(
                lf_path, model_dir, t, batched=False
            ),
            LONG_PEER: lambda: lf_faster_whisper(lf_path, model_dir, t, batched=True),
            "whispertune transcribe (VAD spans, batched)": lambda: lf_ours(
                lf_path, args.model, t, vad=True
            ),
            "whispertune transcribe --no-vad (sequential)": lambda: lf_ours(
                lf_path, args.model, t, vad=False
            ),
        },
    }
    return table


# -- driver ------------------------------------------------------------------------------------


def child(args) -> None:
    """Run one runner and print its JSON result (called as a subprocess)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    workdir = Path(args.workdir)
    manifest = test_manifest(workdir)
    fn = runners(args, manifest, workdir)[args.part][args.run_one]
    result = fn()
    result["rss_mb"] = peak_rss_mb()
    result["cpu"] = CPU["seconds"]
    print("RESULT " + json.dumps(result, ensure_ascii=False))


def run_child(args, part: str, name: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--run-one",
        name,
        "--part",
        part,
        "--threads",
        str(args.threads),
        "--slow-limit",
        str(args.slow_limit),
        "--model",
        args.model,
        "--workdir",
        args.workdir,
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TQDM_DISABLE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit {proc.returncode}"}


def longform_scores(result: dict) -> tuple[float, float]:
    m = json.loads(LONGFORM.read_text(encoding="utf-8").splitlines()[0])
    hyp = "".join(s[2] for s in result["segments"])
    true = [s["start"] for s in m["sentences"]]
    starts = [s[0] for s in result["segments"]]
    near = sum(min(abs(t - x) for t in true) <= 0.5 for x in starts) / max(1, len(starts))
    return cer([m["sentence"]], [hyp]), near


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", choices=["dataset", "longform", "all"], default="all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="builtin:base")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat the whole table, every other time in the reverse order; then a line of "
        "what rescoring added in each run and their median",
    )
    p.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="runner names containing these; a trailing $ anchors one at the name's end",
    )
    p.add_argument("--workdir", default=None)
    p.add_argument(
        "--slow-limit",
        type=int,
        default=16,
        help="clips for the slow runners (transformers pipeline, whisper.cpp), whose beam-5 "
        "CPU runs take 10-20 s a clip here",
    )
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        child(args)
        return
    tmp = tempfile.TemporaryDirectory(prefix="wt-bench-")
    args.workdir = args.workdir or tmp.name
    names = runners(args, test_manifest(Path(args.workdir)), Path(args.workdir))
    parts = ["dataset", "longform"] if args.part == "all" else [args.part]
    adds: dict[str, list[tuple[float, float, float]]] = {}
    for run in range(args.runs):
        for part in parts:
            chosen = [
                name
                for name in names[part]
                if not args.only
                or any(name.endswith(o[:-1]) if o.endswith("$") else o in name for o in args.only)
            ]
            # every other run in the reverse order: on a shared machine whose load drifts
            # during a run, a row and its peer then swap places
            order = chosen if run % 2 == 0 else chosen[::-1]
            results = {}
            for name in order:
                print(f"[run {run + 1}] {part}: {name} ...", file=sys.stderr, flush=True)
                results[name] = run_child(args, part, name)
            rows = [(name, results[name]) for name in chosen]
            if part == "dataset":
                for suffix, share in print_dataset(
                    rows, args, run, test_manifest(Path(args.workdir))
                ).items():
                    adds.setdefault(suffix, []).append(share)
            else:
                print_longform(rows, args, run)
    if args.runs > 1:
        for suffix, shares in adds.items():
            median = statistics.median(w for w, _, _ in shares)
            own = [o for _, _, o in shares]
            print(
                f"\nover {len(shares)} runs, rescoring adds "
                + " / ".join(f"{w * 100:.0f}" for w, _, _ in shares)
                + f" % to --no-rescore's time (median {median * 100:.0f} %; "
                + "CPU "
                + " / ".join(f"{c * 100:.0f}" for _, c, _ in shares)
                + f" %){suffix}; its own CPU within the rescored runs "
                + " / ".join(f"{o * 100:.0f}" for o in own)
                + f" % of the rest (median {statistics.median(own) * 100:.0f} %)"
            )


def print_dataset(rows, args, run, manifest: Path) -> dict[str, tuple[float, float, float]]:
    """The run's table; returns what rescoring adds per encoder: (wall, CPU) of the two rows
    compared, and its own CPU's share of the rest of the rescored run."""
    from whispertune.audio import audio_duration

    samples = _samples(manifest)
    seconds = sum(audio_duration(s.audio_path) for s in samples)
    print(
        f"\n### dataset, run {run + 1}: AISHELL test ({len(samples)} clips, {seconds:.0f} s), "
        f"{args.model}, beam 5, zh, {args.threads} threads"
    )
    print(
        "| runner | clips/s | x faster-whisper | RTF | CPU s/clip | x faster-whisper (CPU) "
        "| CER % | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    peer = next((r for n, r in rows if n == PEER and "error" not in r), None)
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | skipped: {r['error'][:120]} | | | | | | |")
            continue
        n = len(r["hyps"])
        clips_s = n / r["wall"]
        cpu_clip = r["cpu"] / n
        ratio = cpu_ratio = "-"
        if peer:
            ratio = f"{clips_s / (len(peer['hyps']) / peer['wall']):.2f}"
            cpu_ratio = f"{(peer['cpu'] / len(peer['hyps'])) / cpu_clip:.2f}"
        rtf = r["wall"] / (seconds * n / len(samples))
        print(
            f"| {name} | {clips_s:.2f} | {ratio} | {rtf:.3f} | {cpu_clip:.2f} | {cpu_ratio} | "
            f"{cer(r['refs'], r['hyps']) * 100:.2f} | {r['rss_mb']:.0f} |"
        )
    ok = {n: r for n, r in rows if "error" not in r}
    adds = {}
    for suffix in ("", INT8_ENCODER):
        rescored, plain = ok.get(RESCORED + suffix), ok.get(PLAIN + suffix)
        if rescored and plain:
            wall = rescored["wall"] / plain["wall"] - 1
            cpu = rescored["cpu"] / plain["cpu"] - 1
            own = rescored["rescoring_cpu"] / (rescored["cpu"] - rescored["rescoring_cpu"])
            print(
                f"\nrescoring adds {wall * 100:.0f} % to --no-rescore's time "
                f"({cpu * 100:.0f} % CPU){suffix}; within the rescored run, its own CPU "
                f"({rescored['rescoring_cpu']:.1f} s) is {own * 100:.0f} % of the rest"
            )
            adds[suffix] = (wall, cpu, own)
    return adds


def print_longform(rows, args, run) -> None:
    print(
        f"\n### long-form, run {run + 1}: 214 s Mandarin, base, beam 5, zh, {args.threads} threads"
    )
    print(
        "| runner | RTF | x batched pipeline | CPU s | x batched (CPU) | CER % "
        "| starts within 0.5 s | segments | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    peer = next((r for n, r in rows if n == LONG_PEER and "error" not in r), None)
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | skipped: {r['error'][:120]} | | | | | | | |")
            continue
        rate, near = longform_scores(r)
        rtf = r["wall"] / 214.18
        ratio = f"{peer['wall'] / r['wall']:.2f}" if peer else "-"
        cpu_ratio = f"{peer['cpu'] / r['cpu']:.2f}" if peer else "-"
        print(
            f"| {name} | {rtf:.3f} | {ratio} | {r['cpu']:.1f} | {cpu_ratio} | {rate * 100:.2f} "
            f"| {near * 100:.0f} % | {len(r['segments'])} | {r['rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
