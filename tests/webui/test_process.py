"""Process control with a real ``whispertune train`` on a tiny model: Start runs it in its own
process group; a second start into a running run and a start over an existing run are
refused; a new manager (a restarted UI) re-attaches to it; Stop sends SIGINT and a second
Stop SIGKILL to the run's group, never to this process. (The clean stop's checkpoint and
Resume are checked end to end in test_browser.py.)"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.webui.conftest import train_argv
from whispertune.errors import UserError
from whispertune.webui import metrics
from whispertune.webui.process import (
    FAILED,
    FINISHED,
    RUNNING,
    STOPPED,
    STOPPING,
    RunManager,
    log_tail,
)


def test_start_refuse_reattach_and_kill(tiny_model, manifests, tmp_path):
    train, _ = manifests
    runs = tmp_path / "runs"
    run = runs / "r1"
    ui = RunManager(runs)
    argv = train_argv(tiny_model, train, run, "--max-steps", "400", "--holdout", "0")
    rec = ui.start(argv, run)
    assert os.getpgid(rec.pid) == rec.pid != os.getpgrp()  # its own group, not ours
    with pytest.raises(UserError, match="still running"):
        ui.start(argv, run, resume=True)  # a second start into a running run
    deadline = time.time() + 150
    while metrics.summarize(run).step < 1:
        assert ui.status(run) == RUNNING, log_tail(ui.log_path(run))
        assert time.time() < deadline, "no training step in time"
        time.sleep(0.2)

    restarted = RunManager(runs)  # a UI started again on the same runs directory
    assert [p.name for p in restarted.runs()] == ["r1"]
    assert restarted.status(run) == RUNNING
    assert "stopping" in restarted.stop(run)  # SIGINT: the CLI saves, then exits 130 ...
    assert restarted.status(run) == STOPPING
    assert "killed" in restarted.stop(run)  # ... unless a second Stop kills it first
    deadline = time.time() + 30
    while ui.status(run) in (RUNNING, STOPPING):
        assert time.time() < deadline
        time.sleep(0.05)
    assert ui.record(run).returncode == -signal.SIGKILL
    assert ui.status(run) == FAILED
    assert "no training process" in ui.stop(run)
    with pytest.raises(UserError, match="already holds files"):
        ui.start(argv, run)  # not resuming: a run is never overwritten
    os.kill(os.getpid(), 0)  # and we are still here


def test_status_of_a_run_that_ended_while_no_ui_was_its_parent(tmp_path):
    """A restarted UI cannot wait for the process; the CLI's closing lines say how it ended."""
    runs = tmp_path / "runs"
    ui = RunManager(runs)
    run = runs / "r"
    for tail, expected in (("model: /x/best\n", FINISHED),
                           ("checkpoint ...\nresume with: whispertune train --resume\n", STOPPED),
                           ("error: something\n", FAILED)):
        ui.control_dir(run).mkdir(parents=True, exist_ok=True)
        (ui.control_dir(run) / "process.json").write_text(
            json.dumps({"output": str(run), "pid": 999999999, "pgid": 999999999, "argv": [],
                        "started": 0}))
        ui.log_path(run).write_text("training: 100%\r\n" + tail)
        assert ui.status(run) == expected, tail
    assert log_tail(ui.log_path(run)) == "training: 100%\nerror: something"
