"""Training's progress events and cancel: events in order and within their totals; a run
cancelled from its progress callback and resumed ends with the weights of an uninterrupted
run; Ctrl-C in the CLI stops with a checkpoint and exit 130; train() leaves the process as it
found it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import write_manifest
from tests.train.test_training import _losses, _opts, _train_cmd
from whispertune.errors import UserError
from whispertune.progress import Cancelled, ProgressEvent
from whispertune.train import train


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A fresh model cache, so that the encoder cache is computed (and reported) here."""
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))


def _run_opts(tiny_model, tmp_path, out, clips=8, **kw):
    manifest = write_manifest(tmp_path / "m.jsonl", clips)  # 8, batch 2: 4 steps per epoch
    held = write_manifest(tmp_path / "eval.jsonl", 2, start=8)
    values = dict(
        batch_size=2, max_steps=10, eval=held, eval_steps=3, save_total_limit=20,
        learning_rate=1e-2, warmup_steps=2,
    )
    values.update(kw)
    return _opts(tiny_model, manifest, tmp_path / out, **values)


def _check_order(events: list[ProgressEvent]) -> None:
    """done within total; never back within a stretch of one stage; the steps count up."""
    previous = None
    for e in events:
        assert e.total is None or 0 <= e.done <= e.total, e
        if previous is not None and previous.stage == e.stage:
            assert e.done >= previous.done, (previous, e)
        previous = e
    steps = [e.done for e in events if e.stage == "train"]
    assert steps == sorted(steps)


def test_events_arrive_in_order_within_their_totals(tiny_model, tmp_path, own_cache):
    events: list[ProgressEvent] = []
    result = train(_run_opts(tiny_model, tmp_path, "run"), progress=events.append)
    assert all(isinstance(e, ProgressEvent) for e in events)
    _check_order(events)
    stages = [e.stage for e in events]
    assert stages[0] == "encoder-cache" and "computing encoder outputs" in events[0].message
    assert events[0].unit == "clip" and events[0].done == 8 and events[0].total == 8
    assert max(i for i, s in enumerate(stages) if s == "encoder-cache") < stages.index("train")
    steps = [e for e in events if e.stage == "train"]
    assert [e.done for e in steps] == list(range(11)) and {e.total for e in steps} == {10}
    assert {"loss", "lr", "epoch", "samples_per_s"} <= set(steps[-1].figures)
    lines = [e for e in events if e.stage.startswith("validate") and e.message]
    # evaluations at steps 3, 6, 9 and 10, then best/ as published (averaged and scaled)
    assert [e.message.split(":")[0] for e in lines] == [
        "step 3", "step 6", "step 9", "step 10", "best/ as published"
    ]
    assert set(lines[0].figures) == {"cer", "best"}
    assert lines[-1].stage == "validate-best"
    assert lines[-1].figures["cer"] == result.published_metric
    assert min(e.figures["best"] for e in lines[:-1]) == result.best_metric


def test_cancel_then_resume_ends_with_the_uninterrupted_weights(tiny_model, tmp_path):
    # Every run on one more thread than the process has, so that train() must set and then
    # restore it; the same count in all three, as a different one sums in another order.
    threads = torch.get_num_threads()
    whole = train(_run_opts(tiny_model, tmp_path, "a", threads=threads + 1))

    cancel = threading.Event()

    def stop_at_step_5(event: ProgressEvent) -> None:
        if event.stage == "train" and event.done == 5:  # mid-epoch, between evaluations
            cancel.set()

    with pytest.raises(Cancelled) as stopped:
        train(_run_opts(tiny_model, tmp_path, "b", threads=threads + 1), progress=stop_at_step_5,
              cancel=cancel)
    assert torch.get_num_threads() == threads  # restored on cancel too
    assert stopped.value.state == "resumable"
    assert stopped.value.checkpoint == tmp_path / "b/checkpoints/step-0000005"
    assert (tmp_path / "b/latest").read_text().strip() == "step-0000005"
    assert not (tmp_path / "b/checkpoints/step-0000006").exists()

    resumed = train(_run_opts(tiny_model, tmp_path, "b", threads=threads + 1, resume=True))
    a = load_file(str(tmp_path / "a/checkpoints/step-0000010/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step-0000010/adapter_model.safetensors"))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-5)
    assert (resumed.best_step, resumed.averaged_steps) == (whole.best_step, whole.averaged_steps)
    assert resumed.best_metric == whole.best_metric
    assert resumed.published_metric == whole.published_metric


def test_cancel_while_caching_the_encoder_leaves_no_partial_cache(
    tiny_model, tmp_path, own_cache
):
    cancel = threading.Event()

    def stop(event: ProgressEvent) -> None:
        if event.stage == "encoder-cache" and event.done > 0:
            cancel.set()

    opts = _run_opts(tiny_model, tmp_path, "run", clips=20, eval=None)  # 3 cache batches
    with pytest.raises(Cancelled) as stopped:
        train(opts, progress=stop, cancel=cancel)
    assert stopped.value.state == "removed"
    assert list((tmp_path / "cache" / "encoder").iterdir()) == []
    assert not (tmp_path / "run" / "checkpoints").exists()


def _process_state() -> tuple:
    return (
        torch.get_num_threads(),
        random.random(),
        float(np.random.random()),
        float(torch.rand(1)),
    )


def test_train_leaves_threads_and_random_state_as_they_were(tiny_model, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    torch.set_num_threads(2)
    states = []
    for seed in (11, 11):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if states:  # the second time, a run (threads=1, seed 0) and a failing run in between
            train(_run_opts(tiny_model, tmp_path, "ok", max_steps=2, eval=None))
            with pytest.raises(UserError):
                train(_run_opts(tiny_model, tmp_path, "ok", max_steps=2, eval=None))  # occupied
        states.append(_process_state())
    assert states[0] == states[1]
    # accelerate's process-wide state is not left behind: another precision may follow
    try:
        assert Accelerator(mixed_precision="bf16", cpu=True).mixed_precision == "bf16"
    finally:
        AcceleratorState._reset_state()  # as train() leaves it, for the tests that follow


def test_option_checks_name_the_flag(tiny_model, tmp_path, small_manifest):
    for values, flag in (
        ({"adapter_scale": 1.5}, "--adapter-scale"),
        ({"encoder_layers": 2, "lora_scope": "all"}, "--encoder-layers"),
        ({"pack_seconds": 40.0}, "--pack-seconds"),
        ({"average_checkpoints": 0}, "--average-checkpoints"),
        ({"holdout": 1.0}, "--holdout"),
        ({"batch_size": 0}, "--batch-size"),
    ):
        with pytest.raises(UserError, match=flag):
            _opts(tiny_model, small_manifest, tmp_path / "run", **values)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_stops_with_a_checkpoint_and_exit_130(tiny_model, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", 8)
    cmd = _train_cmd(tiny_model, manifest, tmp_path / "run")
    cmd.remove("-q")  # the eval lines and the notice are what is checked
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 300
    while not (tmp_path / "run/checkpoints/step-0000002").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before Ctrl-C"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "stopping after this step; a checkpoint is saved (resume with --resume)" in err
    assert "checkpoint " + str(tmp_path / "run/checkpoints/step-") in out
    assert "resume with: whispertune train " in out and out.rstrip().endswith("--resume")
    stopped_at = (tmp_path / "run/latest").read_text().strip()
    assert stopped_at < "step-0000010"
    resumed = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(_losses(tmp_path / "run")) == 10


@pytest.mark.parametrize("limit,advice", [(2, False), (1, True)])
def test_closing_lines_agree_and_the_advice_fits(tiny_model, tmp_path, caplog, limit, advice):
    """best/ is described once; --save-total-limit is advised only where pruning removed
    checkpoints that averaging wanted, not where the run saved few."""
    steps = 2 if not advice else 4  # 2: one checkpoint besides the best; 4: pruned to 1
    opts = _run_opts(
        tiny_model, tmp_path, "run", max_steps=steps, eval_steps=1, save_total_limit=limit,
        average_checkpoints=3,
    )
    with caplog.at_level("INFO"):
        result = train(opts)
    text = caplog.text
    assert ("--save-total-limit" in text) == advice
    assert "averaging 2" in text and result.averaged_steps and len(result.averaged_steps) == 2
    closing = [r.getMessage() for r in caplog.records if r.getMessage().startswith("best/: ")]
    assert closing[-1].startswith("best/: the average of ") and "scaled by 0.5" in closing[-1]
    assert all(", its adapter scaled by 0.5" in line for line in closing)
