"""One training process per run directory, for the run's whole life.

Why: two ``train`` runs into the same ``--output`` (a second terminal, the web UI and a
terminal, a job started twice) both "finish" while interleaving ``metrics.jsonl`` and mixing
their checkpoints. The holder keeps an exclusive ``flock`` on ``<output>/.lock``, which holds
its PID for the message the second run prints. The kernel drops the lock when the holder dies,
however it dies (SIGKILL included), so a lock file left by a dead process is simply taken over:
there is no stale lock to clear by hand.

The file is removed on release. A process that opened it just before and then locks the
removed file would hold a lock nobody else sees; so after locking, the holder checks that the
path still names the file it locked, and starts over if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from whispertune.errors import UserError
from whispertune.staging import check_output_dir, clean_leftovers

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def _holder(path: Path) -> str:
    """Who holds the lock, as the refusal names it."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except OSError:
        pid = ""
    return f"process {pid}" if pid.isdigit() else "another process"


def acquire(run_dir: Path) -> int:
    """Lock ``run_dir`` for this process; returns the lock's file descriptor (keep it open:
    closing it releases the lock). Raises UserError naming the holder's PID where another
    live process holds it, or where ``run_dir`` cannot be a writable folder."""
    check_output_dir(run_dir, "--output")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(
                f"{run_dir}: another training run is using this directory ({_holder(path)}, "
                f"{path}); wait for it to end or stop it, or choose another --output"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # released and removed by its holder meanwhile: lock the new file
    previous = os.read(fd, 32).decode("ascii", "replace").strip()
    if previous.isdigit() and int(previous) != os.getpid():
        logger.info("%s: taking over the lock of process %s, which has ended", run_dir, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    clean_leftovers(run_dir)  # temporary files of a killed run here (metrics, pointers)
    return fd


def release(run_dir: Path, fd: int) -> None:
    """Remove the lock file and release the lock (in that order: see the module's note)."""
    with contextlib.suppress(OSError):
        (run_dir / LOCK_NAME).unlink()
    os.close(fd)


@contextlib.contextmanager
def run_lock(run_dir: Path, hold: bool = True) -> Iterator[None]:
    """Hold the lock of ``run_dir`` for the block (``hold=False``: no lock, for the ranks of a
    multi-process run other than the main one, whose lock covers them)."""
    if not hold:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    fd = acquire(run_dir)
    try:
        yield
    finally:
        release(run_dir, fd)
        if created:  # a run that failed before writing anything leaves no empty folder
            with contextlib.suppress(OSError):
                run_dir.rmdir()
