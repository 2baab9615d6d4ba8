"""Load on ``whispertune serve``: the batcher against one-request-at-a-time serving.

    python benchmarks/server_load.py [--model builtin:base] [--concurrency 1 8 32]
                                     [--limit 56] [--threads 2] [--level-timeout 900]

For each mode (``batched``: the default server; ``one-at-a-time``: ``--no-batching``, how the
seed's server and whisper.cpp's serve) a server is started on a free loopback port and warmed
up with one request; then, for each concurrency C and each mode in turn (so that load from
other jobs on the machine falls on both alike), C client threads send the AISHELL test
clips (``src/whispertune/samples/aishell_s0150/test.jsonl``, language zh, the server's
default decode options) to ``POST /recognition`` until max(limit, C) requests are done. Per
level: p50/p95 latency, clips/s, errors, the server's peak RSS (VmHWM, reset per level) and
CPU seconds per clip (the figure to compare when other jobs share the cores), mean batch,
and CER against the references (normalized as ``whispertune evaluate`` does). Then the time to
the first streamed segment of the 3.6-min long-form file (../shared/data/longform) on the idle
server (``--longform-only``: that alone; the server streams with ``--first-span-seconds 10``,
``--server-args --first-span-seconds 0`` for spans of up to 30 s). A table with batched /
one-at-a-time ratios is printed; ``--output`` writes JSON.

Loopback only and bounded: each level stops taking new clips after ``--level-timeout``
seconds; the servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src/whispertune/samples/aishell_s0150"
LONGFORM = REPO.parent / "shared" / "data" / "longform"
MODES = {"batched": [], "one-at-a-time": ["--no-batching"]}


@dataclass
class Level:
    mode: str
    clients: int
    requests: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict = field(default_factory=dict)
    wall_s: float = 0.0
    p50_s: float = 0.0
    p95_s: float = 0.0
    clips_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    cpu_s_per_clip: float = 0.0
    mean_batch: float = 0.0
    cer: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clips(limit: int) -> list[tuple[Path, str]]:
    rows = [json.loads(line) for line in (SAMPLE / "test.jsonl").read_text("utf-8").splitlines()
            if line.strip()]
    return [(SAMPLE / r["audio"]["path"], r["sentence"]) for r in rows][:limit]


def proc_status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024  # kB -> MB
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


class Server:
    def __init__(self, model: str, threads: int, extra: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "whispertune", "serve", "--model", model, "--host",
               "127.0.0.1", "--port", str(self.port), "--threads", str(threads), *extra]
        self.log = open(log, "wb")
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {Path(log).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 300 s")
            time.sleep(0.3)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=30).json()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def transcribe(url: str, path: Path, language: str) -> tuple[int, str]:
    with open(path, "rb") as fh:
        r = httpx.post(f"{url}/recognition", files={"audio": (path.name, fh)},
                       data={"language": language}, timeout=900)
    if r.status_code != 200:
        return r.status_code, ""
    return 200, "".join(s["result"] for s in r.json()["results"])


def run_level(server: Server, mode: str, clients: int, work: list[tuple[Path, str]],
              language: str, timeout: float) -> Level:
    from whispertune.evaluate import score_pairs
    from whispertune.text import normalize

    n = max(len(work), clients)
    jobs = [work[i % len(work)] for i in range(n)]
    lock = threading.Lock()
    next_job = [0]
    results: list[tuple[float, int, str, str]] = []
    deadline = time.monotonic() + timeout

    def client() -> None:
        while True:
            with lock:
                if next_job[0] >= n or time.monotonic() > deadline:
                    return
                path, ref = jobs[next_job[0]]
                next_job[0] += 1
            t0 = time.perf_counter()
            try:
                status, hyp = transcribe(server.url, path, language)
            except httpx.HTTPError as e:
                status, hyp = -1, type(e).__name__
            with lock:
                results.append((time.perf_counter() - t0, status, ref, hyp))

    pid = server.process.pid
    before = server.health().get("batches", {})
    reset_peak_rss(pid)
    cpu0 = cpu_seconds(pid)
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    after = server.health().get("batches", {})
    level = Level(mode, clients, requests=len(results), wall_s=round(wall, 2))
    good = [r for r in results if r[1] == 200]
    level.ok, level.errors = len(good), len(results) - len(good)
    for _, status, _, _ in results:
        if status != 200:
            level.error_kinds[str(status)] = level.error_kinds.get(str(status), 0) + 1
    lat = sorted(r[0] for r in good)
    if lat:
        level.p50_s = round(lat[len(lat) // 2], 2)
        level.p95_s = round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 2)
        level.clips_per_s = round(len(good) / wall, 3)
        level.cpu_s_per_clip = round(cpu / len(good), 2)
        refs = [normalize(r[2]) for r in good]
        hyps = [normalize(r[3]) for r in good]
        s, d, i, total, _ = score_pairs(refs, hyps, "cer")
        level.cer = round(100 * (s + d + i) / max(1, total), 2)
    level.peak_rss_mb = round(proc_status(pid, "VmHWM"), 1)
    calls = after.get("calls", 0) - before.get("calls", 0)
    if calls:
        level.mean_batch = round((after.get("clips", 0) - before.get("clips", 0)) / calls, 2)
    return level


def first_segment(server: Server, path: Path, language: str) -> dict:
    """Seconds from sending the long-form file to its first streamed segment, and to the
    last."""
    t0 = time.perf_counter()
    first = None
    count = 0
    with open(path, "rb") as fh, httpx.stream(
        "POST", f"{server.url}/recognition_stream", files={"audio": (path.name, fh)},
        data={"language": language}, timeout=900,
    ) as r:
        for chunk in r.iter_raw():
            if first is None and b"\0" in chunk:
                first = time.perf_counter() - t0
            count += chunk.count(b"\0")
    return {"first_segment_s": round(first or 0.0, 2),
            "last_segment_s": round(time.perf_counter() - t0, 2), "segments": count}


def print_table(levels: list[Level], longform: dict) -> None:
    head = (f"{'mode':<14}{'clients':>8}{'clips':>7}{'errors':>7}{'clips/s':>9}{'p50 s':>8}"
            f"{'p95 s':>8}{'CPU s/clip':>11}{'batch':>7}{'RSS MB':>8}{'CER %':>8}")
    print(head)
    print("-" * len(head))
    for lv in levels:
        cer = f"{lv.cer:.2f}" if lv.cer is not None else "-"
        print(f"{lv.mode:<14}{lv.clients:>8}{lv.ok:>7}{lv.errors:>7}{lv.clips_per_s:>9.3f}"
              f"{lv.p50_s:>8.2f}{lv.p95_s:>8.2f}{lv.cpu_s_per_clip:>11.2f}"
              f"{lv.mean_batch or 1:>7.2f}{lv.peak_rss_mb:>8.0f}{cer:>8}")
    by = {(lv.mode, lv.clients): lv for lv in levels}
    print()
    for c in sorted({lv.clients for lv in levels}):
        b, o = by.get(("batched", c)), by.get(("one-at-a-time", c))
        if b and o and o.clips_per_s and b.p50_s:
            ratio = b.clips_per_s / o.clips_per_s
            print(f"{c:>3} clients: batched / one-at-a-time  throughput x{ratio:.2f}"
                  f", p50 latency x{b.p50_s / max(o.p50_s, 1e-9):.2f}"
                  f", CPU per clip x{b.cpu_s_per_clip / max(o.cpu_s_per_clip, 1e-9):.2f}")
    for mode, lf in longform.items():
        print(f"long-form 3.6 min, {mode}: first segment {lf['first_segment_s']:.2f} s, "
              f"last {lf['last_segment_s']:.2f} s ({lf['segments']} segments)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:base")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--limit", type=int, default=56, help="AISHELL test clips per level")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--language", default="zh")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--level-timeout", type=float, default=900.0,
                    help="seconds after which a level sends no new clips")
    ap.add_argument("--no-longform", action="store_true")
    ap.add_argument("--longform-only", action="store_true",
                    help="only the time to the first streamed segment (no load levels)")
    ap.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                    help="more 'whispertune serve' flags for both modes (last)")
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    work = clips(args.limit)
    long_file = next(LONGFORM.glob("*.opus"), None)
    levels: list[Level] = []
    longform: dict[str, dict] = {}
    logs = Path(tempfile.mkdtemp(prefix="server-load-"))
    # Both servers run side by side (an idle one costs no CPU) and the modes alternate per
    # level, so that load from other jobs on the machine falls on both alike.
    servers: dict[str, Server] = {}
    try:
        for mode in args.modes:
            servers[mode] = Server(args.model, args.threads, MODES[mode] + args.server_args,
                                   logs / f"{mode}.log")
            transcribe(servers[mode].url, work[0][0], args.language)  # warm-up
        if long_file is not None and not args.no_longform:
            for mode, server in servers.items():
                longform[mode] = first_segment(server, long_file, args.language)
                print(f"{mode}: long-form {longform[mode]}", flush=True)
        for c in [] if args.longform_only else args.concurrency:
            for mode, server in servers.items():
                level = run_level(server, mode, c, work, args.language, args.level_timeout)
                levels.append(level)
                print(f"{mode} x{c}: {asdict(level)}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    print()
    print(f"model {args.model}, {args.threads} threads, {len(work)} AISHELL test clips per "
          f"level (language {args.language}), {os.cpu_count()} CPUs; server logs: {logs}")
    print_table(levels, longform)
    if args.output:
        args.output.write_text(json.dumps({"levels": [asdict(lv) for lv in levels],
                                           "longform": longform}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
