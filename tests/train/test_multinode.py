"""Training on several machines, checked on loopback: two "nodes" (two torchrun launchers, one
process each, gloo) train the same model as one node with two processes, to the last bit.

Each node gets its own --output and its own whispertune cache, as two machines with their own
disks would: that is how a rank reading a file only rank 0 wrote (the encoder cache) or a
second node writing the run directory shows up here rather than on a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import write_manifest

TIMEOUT_S = 240  # a rendezvous that never completes fails the test instead of hanging CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_args(model: Path, manifest: Path, output: Path) -> list[str]:
    """The same training options for every launch (seed included, by default)."""
    return [
        "-m",
        "whispertune",
        "-q",
        "train",
        *("--model", str(model), "--train", str(manifest), "--output", str(output)),
        *("--language", "Chinese", "--batch-size", "2", "--epochs", "2"),
        *("--num-workers", "0", "--threads", "1", "--log-steps", "1", "--pack-seconds", "0"),
    ]


def _env(cache: Path) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", WHISPERTUNE_CACHE=str(cache))


def _run_all(commands: list[tuple[list[str], dict[str, str]]]) -> None:
    """Start every launcher at once (the nodes of one job), wait for all of them; on timeout
    kill each whole process group (launcher and workers). Logs go to files: a full pipe of
    one launcher would stall it while the test waits on another."""
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    procs = [
        subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        for (cmd, env), log in zip(commands, logs, strict=True)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        pytest.fail(f"training did not finish within {TIMEOUT_S} s (rendezvous or collective hung)")
    failed = []
    for i, (proc, log) in enumerate(zip(procs, logs, strict=True)):
        log.seek(0)
        if proc.returncode:
            failed.append(f"launcher {i}:\n{log.read()[-3000:]}")
        log.close()
    assert not failed, "\n".join(failed)  # every failed node's log: the root cause is in one


def _metrics(run: Path) -> list[dict]:
    """The logged figures that do not depend on the machine's speed."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]


def _assert_same_run(reference: Path, run: Path) -> None:
    a = load_file(str(reference / "best/adapter_model.safetensors"))
    b = load_file(str(run / "best/adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    ours, theirs = _metrics(run), _metrics(reference)
    assert [sorted(r) for r in ours] == [sorted(r) for r in theirs]  # same rows, same figures
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine == pytest.approx(ref, rel=1e-6), mine["step"]
    ref_run, this_run = (json.loads((d / "run.json").read_text()) for d in (reference, run))
    for key in ("world_size", "total_steps", "steps_per_epoch", "train_samples"):
        assert this_run[key] == ref_run[key], key


def _only_one_writer(outputs: list[Path]) -> Path:
    """The node-local output that holds the run; every other node's is empty (global rank 0
    writes; a node-local rank 0 elsewhere must not)."""
    holders = [d for d in outputs if d.is_dir() and any(d.iterdir())]
    assert len(holders) == 1, [sorted(p.name for p in d.iterdir()) for d in holders]
    return holders[0]


@pytest.fixture(scope="module")
def one_node_two_processes(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """The reference: one node, ``torchrun --nproc_per_node 2``; (manifest, run directory)."""
    base = tmp_path_factory.mktemp("one-node")
    manifest = write_manifest(base / "m.jsonl", 8)  # 4 batches of 2: 2 steps per epoch
    run = base / "run"
    cmd = [
        sys.executable,
        *("-m", "torch.distributed.run", "--nproc_per_node", "2"),
        *("--master_addr", "127.0.0.1", "--master_port", str(_free_port())),
        *_train_args(tiny_model, manifest, run),
    ]
    _run_all([(cmd, _env(base / "cache"))])
    return manifest, run


def test_two_nodes_with_torchrun_equal_one_node_with_two_processes(
    tiny_model, tmp_path, one_node_two_processes
):
    manifest, reference = one_node_two_processes
    endpoint = f"127.0.0.1:{_free_port()}"
    job = f"whispertune-{uuid.uuid4().hex[:8]}"
    outputs = [tmp_path / f"node{r}/run" for r in range(2)]
    commands = []
    for node_rank, output in enumerate(outputs):
        cmd = [
            sys.executable,
            *("-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"),
            *("--node_rank", str(node_rank), "--rdzv_backend", "c10d"),
            *("--rdzv_endpoint", endpoint, "--rdzv_id", job),
            *_train_args(tiny_model, manifest, output),
        ]
        commands.append((cmd, _env(tmp_path / f"node{node_rank}/cache")))
    _run_all(commands)

    # c10d ranks nodes in its own order: the run lands where global rank 0 ran
    run = _only_one_writer(outputs)
    _assert_same_run(reference, run)
    assert len(_metrics(run)) == 4  # 2 epochs of 2 steps, logged once
    for node in range(2):  # each node encoded the clips into its own cache
        assert list((tmp_path / f"node{node}/cache/encoder").glob("encoder-*.f16"))


@pytest.mark.skipif(
    os.environ.get("WHISPERTUNE_TEST_ACCELERATE_MULTINODE") != "1",
    reason="about a minute more on 2 cores; set WHISPERTUNE_TEST_ACCELERATE_MULTINODE=1",
)
def test_two_nodes_with_accelerate_launch_equal_one_node(
    tiny_model, tmp_path, one_node_two_processes
):
    manifest, reference = one_node_two_processes
    port = str(_free_port())
    outputs = [tmp_path / f"node{r}/run" for r in range(2)]
    commands = []
    for machine_rank, output in enumerate(outputs):
        train = _train_args(tiny_model, manifest, output)[1:]  # after "-m"
        cmd = [
            sys.executable,
            *("-m", "accelerate.commands.launch", "--multi_gpu"),  # the DDP launcher; gloo on CPU
            *("--num_machines", "2", "--num_processes", "2"),
            *("--machine_rank", str(machine_rank)),
            *("--main_process_ip", "127.0.0.1", "--main_process_port", port),
            *("--mixed_precision", "no", "--dynamo_backend", "no", "-m", *train),
        ]
        commands.append((cmd, _env(tmp_path / f"node{machine_rank}/cache")))
    _run_all(commands)

    # static rendezvous: machine 0 holds global rank 0, so the run is on machine 0's disk
    assert _only_one_writer(outputs) == outputs[0]
    _assert_same_run(reference, outputs[0])
