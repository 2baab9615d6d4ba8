"""staging: output locations refused before the work, a failed write leaves nothing behind, and
what killed runs left is cleaned on the next run (never a live run's work; an old model caught
mid-replacement is put back, not deleted)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from whispertune import staging
from whispertune.errors import UserError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(directory, output_name: str, kind: str, pid: int, host: str | None = None):
    """A temporary entry named as ``staging`` names them, owned by ``pid``."""
    name = f".{output_name}.{kind}-{pid}@{host or staging._HOST}-abc123"
    path = directory / name
    path.mkdir()
    (path / "part.bin").write_bytes(b"x" * 10)
    return path


def test_output_of_the_wrong_kind_is_refused(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"--output-dir .*file.txt: is a file, not a folder"):
        staging.check_output_dir(a_file, "--output-dir")
    with pytest.raises(UserError, match=r"cannot be created: .*file.txt is a file"):
        staging.check_output_dir(a_file / "x" / "y")
    with pytest.raises(UserError, match=r"cannot be created: .*file.txt is a file"):
        staging.check_output_file(a_file / "x.jsonl")
    with pytest.raises(UserError, match="is a folder"):
        staging.check_output_file(tmp_path)
    with pytest.raises(UserError, match="is a file"):
        staging.refuse_existing(a_file, force=True)  # --force replaces a model folder only
    staging.check_output_dir(tmp_path / "new" / "deeper")  # creatable: fine
    staging.check_output_file(tmp_path / "new" / "out.jsonl")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    monkeypatch.setenv(staging.FAULT_ENV, str(path))
    with pytest.raises(OSError, match="No space left"), staging.atomic_text_file(path) as fh:
        fh.write("new\n")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_leftovers_of_ended_runs_are_removed_and_live_ones_kept(tmp_path):
    dead = _leftover(tmp_path, "model", "ct2-export", _dead_pid())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _leftover(tmp_path, "model", "ct2-export", sleeper.pid)
        mine = _leftover(tmp_path, "model", "merge", os.getpid())
        elsewhere = _leftover(tmp_path, "model", "merge", _dead_pid(), host="0123abcd")
        other_output = _leftover(tmp_path, "other", "merge", _dead_pid())
        text = tmp_path / f".out.txt.write-{_dead_pid()}@{staging._HOST}-k2j3.tmp"
        text.write_text("half")
        removed = staging.clean_leftovers(tmp_path, "model")
        assert removed == [dead]
        assert live.exists() and mine.exists() and elsewhere.exists() and other_output.exists()
        # another host's (or a reused pid's) entry goes by age only
        old = time.time() - staging.LEFTOVER_AGE_S - 60
        os.utime(elsewhere, (old, old))
        assert staging.clean_leftovers(tmp_path, "model") == [elsewhere]
        assert set(staging.clean_leftovers(tmp_path)) == {other_output, text}  # any output
        assert live.exists() and mine.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_old_output_caught_mid_replacement_is_put_back(tmp_path):
    """A run killed between moving the old model aside and moving the new one in: the next
    run restores the old model instead of deleting it with the leftovers."""
    work = _leftover(tmp_path, "model", "merge", _dead_pid())
    (work / staging.PREVIOUS).mkdir()
    (work / staging.PREVIOUS / "model.safetensors").write_text("old weights")
    with staging.staging_dir(tmp_path / "model", ".merge-") as fresh:
        assert fresh.name.startswith(f".model.merge-{os.getpid()}@")
        assert (tmp_path / "model" / "model.safetensors").read_text() == "old weights"
        assert not work.exists()
    assert not fresh.exists()


def test_temporary_names_carry_their_owner(tmp_path):
    """Two writers of one file never share a temporary name; each name says whose it is."""
    path = tmp_path / "t.txt"
    with staging.atomic_text_file(path) as a, staging.atomic_text_file(path) as b:
        names = [p.name for p in tmp_path.iterdir()]
        a.write("a")
        b.write("b")
    assert len(set(names)) == 2
    assert all(n.startswith(f".t.txt.write-{os.getpid()}@{staging._HOST}-") for n in names)
    assert path.read_text() in {"a", "b"}
