"""Start, stop and find ``whispertune train`` processes that outlive the web UI.

Why a subprocess and not a thread: a run must survive the page, the UI process and its
restart, exactly as a run started in a terminal does, and its Stop must be the CLI's own
clean stop. So each run is ``whispertune train ...`` in a session of its own
(``start_new_session``: its process group is its pid); Stop sends SIGINT to that group (the
CLI saves a resumable checkpoint and exits 130) and a second Stop sends SIGKILL to it; the
UI's own group is never signalled.

Why the record is kept beside the run and not inside it: ``whispertune train`` refuses an
output directory that already holds files (it protects runs from being overwritten), so the
UI cannot write into the directory before the trainer has started. The record (pid, process
group, the process's start time against pid reuse, argv, log) lives in
``<runs-dir>/.webui/<run>/`` where any UI started on the same runs directory finds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from whispertune.errors import UserError

logger = logging.getLogger(__name__)

CONTROL_DIR = ".webui"
RECORD = "process.json"
LOG = "train.log"

RUNNING = "running"
STOPPING = "stopping"  # SIGINT sent: saving a checkpoint
FINISHED = "finished"
STOPPED = "stopped"  # ended with a resumable checkpoint
FAILED = "failed"
NOT_STARTED = "not started"


@dataclass
class ProcessRecord:
    """What the UI needs to find, watch and stop a run it started, after any restart."""

    output: str
    pid: int
    pgid: int
    argv: list[str]
    started: float
    create_time: float | None = None  # psutil's start time of pid: tells a reused pid apart
    stops: int = 0
    returncode: int | None = None
    ended: float | None = None
    history: list[dict] = field(default_factory=list)  # earlier processes of this run


def _create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # psutil missing, or the process is gone
        return None


class RunManager:
    """The runs of one runs directory and the training processes the UI started for them."""

    def __init__(self, runs_dir: Path, python: str | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.python = python or sys.executable
        self._children: dict[int, subprocess.Popen] = {}  # reaped here (no zombies)

    # --- where things are --------------------------------------------------------------------

    def control_dir(self, output: str | Path) -> Path:
        """``<runs-dir>/.webui/<name>-<hash of the absolute path>``: one per run directory."""
        path = Path(output).expanduser().absolute()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        return self.runs_dir / CONTROL_DIR / f"{path.name}-{digest}"

    def log_path(self, output: str | Path) -> Path:
        return self.control_dir(output) / LOG

    def record(self, output: str | Path) -> ProcessRecord | None:
        path = self.control_dir(output) / RECORD
        try:
            return ProcessRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def _write(self, rec: ProcessRecord) -> None:
        folder = self.control_dir(rec.output)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (RECORD + ".tmp")
        tmp.write_text(json.dumps(asdict(rec), indent=1), encoding="utf-8")
        os.replace(tmp, folder / RECORD)

    # --- state ---------------------------------------------------------------------------------

    def alive(self, rec: ProcessRecord) -> bool:
        """Whether the run's process is still there (and is the one the UI started)."""
        child = self._children.get(rec.pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return True
            self._children.pop(rec.pid, None)
            if rec.returncode is None:
                rec.returncode, rec.ended = code, time.time()
                self._write(rec)
            return False
        if rec.returncode is not None:
            return False
        try:
            os.kill(rec.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if rec.create_time is not None:
            now = _create_time(rec.pid)
            if now is not None and abs(now - rec.create_time) > 1.0:
                return False  # the pid belongs to another process now
        return _not_zombie(rec.pid)

    def status(self, output: str | Path) -> str:
        """running / stopping / finished / stopped / failed / not started."""
        rec = self.record(output)
        if rec is None:
            return NOT_STARTED
        if self.alive(rec):
            return STOPPING if rec.stops else RUNNING
        if rec.returncode == 0:
            return FINISHED
        if rec.returncode == 130:
            return STOPPED
        if rec.returncode is None:  # ended while no UI was its parent: read its last words
            tail = _tail_text(self.log_path(output), 4000)
            if "resume with:" in tail:
                return STOPPED
            if "\nmodel: " in tail or tail.startswith("model: "):
                return FINISHED
            if rec.stops:
                return STOPPED
        return FAILED

    # --- control -------------------------------------------------------------------------------

    def start(self, argv: list[str], output: str | Path, resume: bool = False) -> ProcessRecord:
        """Run ``whispertune train <argv>`` for ``output`` in a new session; its output goes
        to the run's log (appended on resume). Refuses a run that is still going and, unless
        resuming or --force is in argv, a directory that already holds a run."""
        output = Path(output)
        old = self.record(output)
        if old is not None and self.alive(old):
            raise UserError(
                f"{output}: a training process (pid {old.pid}) is still running in it; stop "
                "it first or choose another output directory"
            )
        if resume:
            if not (output / "latest").is_file() and not (output / "checkpoints").is_dir():
                raise UserError(f"{output}: no checkpoint to resume from")
            if "--resume" not in argv:
                argv = [*argv, "--resume"]
        elif output.exists() and any(output.iterdir()) and "--force" not in argv:
            raise UserError(
                f"{output}: already holds files (another run?); Resume continues it, or "
                "choose a new output directory (the run is not overwritten)"
            )
        folder = self.control_dir(output)
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / LOG, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115
        with log:
            log.write(f"$ whispertune train {' '.join(argv)}\n")
            log.flush()
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            proc = subprocess.Popen(
                [self.python, "-m", "whispertune", "train", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: Stop never reaches the UI
                env=env,
            )
        self._children[proc.pid] = proc
        history = []
        if old is not None:
            history = [*old.history, {k: v for k, v in asdict(old).items() if k != "history"}]
        rec = ProcessRecord(
            output=str(output.absolute()),
            pid=proc.pid,
            pgid=proc.pid,
            argv=list(argv),
            started=time.time(),
            create_time=_create_time(proc.pid),
            history=history,
        )
        self._write(rec)
        logger.info("started training pid %d for %s", proc.pid, output)
        return rec

    def stop(self, output: str | Path) -> str:
        """First call: SIGINT to the run's process group (a checkpoint is saved, then it
        exits). Next call: SIGKILL to the group. Returns what was done, for the UI."""
        rec = self.record(output)
        if rec is None or not self.alive(rec):
            return "no training process is running for this run"
        if rec.pgid <= 1 or rec.pgid == os.getpgrp():
            raise UserError("refusing to signal the web UI's own process group")
        sig = signal.SIGINT if rec.stops == 0 else signal.SIGKILL
        try:
            os.killpg(rec.pgid, sig)
        except ProcessLookupError:
            return "the training process had already ended"
        rec.stops += 1
        self._write(rec)
        if sig == signal.SIGINT:
            return ("stopping: the run saves a checkpoint after this step, then exits "
                    "(press Stop again to kill it at once)")
        return "killed the training process group (resume continues from the last checkpoint)"

    def wait(self, output: str | Path, timeout: float) -> str:
        """Poll until the run's process has ended (for tests and the CLI); returns status."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            rec = self.record(output)
            if rec is None or not self.alive(rec):
                break
            time.sleep(0.2)
        return self.status(output)

    def runs(self) -> list[Path]:
        """Run directories: the runs directory's children holding run.json or started from
        here, plus runs elsewhere that this UI started; newest first."""
        found: dict[str, Path] = {}
        if self.runs_dir.is_dir():
            for child in self.runs_dir.iterdir():
                if child.is_dir() and child.name != CONTROL_DIR and (
                    (child / "run.json").is_file() or (child / "metrics.jsonl").is_file()
                ):
                    found[str(child.absolute())] = child
        control = self.runs_dir / CONTROL_DIR
        if control.is_dir():
            for rec_file in control.glob(f"*/{RECORD}"):
                try:
                    output = json.loads(rec_file.read_text(encoding="utf-8"))["output"]
                except (OSError, ValueError, KeyError):
                    continue
                found.setdefault(str(Path(output).absolute()), Path(output))

        def started(p: Path) -> float:
            rec = self.record(p)
            if rec is not None:
                return rec.started
            return p.stat().st_mtime if p.exists() else 0.0

        return sorted(found.values(), key=started, reverse=True)

    def close(self) -> None:
        """Forget the children without touching them: runs go on after the UI ends."""
        self._children.clear()


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def _tail_text(path: Path, size: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int = 40) -> str:
    """The log's last lines as a terminal would show them: a progress bar redrawn with
    carriage returns shows only its newest state."""
    text = _tail_text(path, 64_000)
    shown = [line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line.rstrip("\r")
             for line in text.split("\n")]
    shown = [line for line in shown if line.strip()]
    return "\n".join(shown[-lines:])
