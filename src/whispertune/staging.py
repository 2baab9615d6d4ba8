"""Write a model directory beside its destination, then move it in.

Why: an export, a merge or a conversion takes minutes, can fail or be cancelled half-way, and
may replace an earlier output (``--force``). Built in a temporary folder next to ``output`` (the
same file system, so moving it is a rename), a half-written model never sits at ``output``;
replacing moves the old output aside into that temporary folder before the new one is moved in,
so a process killed between the two renames leaves the old model (in the temporary folder), never
neither. The temporary folder, with the old output in it, is removed when the work ends.

Output locations are checked before the work starts (:func:`check_output_dir`,
:func:`check_output_file`): a path that exists as the wrong kind, lies under a file or cannot be
written is an ``error:`` before minutes of decoding, not a traceback after them.

Temporary names carry their owner (``.<output>.<kind>-<pid>@<host>-<random>``), so the next
run on the same output removes what a killed run left (:func:`clean_leftovers`): only entries
whose process is gone (on this host) or that are older than :data:`LEFTOVER_AGE_S`; a
concurrent writer's temporary file is never touched.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from whispertune.errors import UserError

logger = logging.getLogger(__name__)

PREVIOUS = "previous"  # in a staging folder: the output being replaced, until the new one is in
LEFTOVER_AGE_S = 2 * 24 * 3600  # older than this, a temporary entry is left over, whoever made it
# Test only: a glob of paths whose atomic text write fails with an OSError after the temporary
# file is written (as a full disk does), so tests can reach the handling of a failed write,
# which as root neither chmod nor a read-only folder provokes. Read here and nowhere else.
FAULT_ENV = "WHISPERTUNE_TEST_FAIL_WRITE"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(
    r"\.(?P<name>.+)\.(?P<kind>[a-z0-9-]+?)-(?P<pid>\d+)@(?P<host>[0-9a-f]{8})-\w+"
)


def temp_prefix(output: Path, kind: str) -> str:
    """The start of a temporary name for ``output``: who made it, so leftovers can be told
    from a concurrent run's work (see :func:`clean_leftovers`)."""
    return f".{output.name}.{kind}-{os.getpid()}@{_HOST}-"


def _owner_gone(pid: int, host: str) -> bool:
    """True where the process that made a temporary entry has ended (on this host; another
    host's processes cannot be seen, so their entries go by age only)."""
    if host != _HOST:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def clean_leftovers(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary entries (files and folders) that killed runs left in
    ``directory`` (those for the output ``name`` only, where given): the ones whose process
    has ended, or older than :data:`LEFTOVER_AGE_S`. Returns what was removed; logs it."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name.removesuffix(".tmp"))
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        if not (_owner_gone(int(match["pid"]), match["host"]) or age > LEFTOVER_AGE_S):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _restore_previous(path, Path(directory) / match["name"])
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info(
            "removed %d temporary file(s) left by ended runs: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


def _restore_previous(staging: Path, output: Path) -> None:
    """A run killed between moving the old output aside and moving the new one in left the
    old one in its staging folder (see :func:`move_into_place`): put it back, not delete it."""
    previous = staging / PREVIOUS
    if (previous.exists() or previous.is_symlink()) and not (
        output.exists() or output.is_symlink()
    ):
        os.replace(previous, output)
        logger.warning("%s: restored from a run killed while replacing it", output)


def _blocking_ancestor(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (itself included) that is not a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_output_dir(path: Path, flag: str = "--output") -> None:
    """Raise UserError unless a folder can be at ``path`` and be written: not a file, not
    under a file, its nearest existing folder writable. Called before the work starts."""
    path = Path(path)
    blocking = _blocking_ancestor(path)
    if blocking == path:
        raise UserError(f"{flag} {path}: is a file, not a folder")
    if blocking is not None:
        raise UserError(f"{flag} {path}: cannot be created: {blocking} is a file")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable")


def check_output_file(path: Path, flag: str = "--output") -> None:
    """Raise UserError unless a file can be written at ``path``: not a folder, its folder
    creatable and writable (files are replaced by rename, so only the folder matters)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    blocking = _blocking_ancestor(path.parent)
    if blocking is not None:
        raise UserError(f"{flag} {path}: cannot be created: {blocking} is a file")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable")


def _injected_fault(path: Path) -> None:
    """Fail like a full disk where the test-only :data:`FAULT_ENV` glob matches ``path``."""
    pattern = os.environ.get(FAULT_ENV)
    if pattern and fnmatch.fnmatch(str(path), pattern):
        raise OSError(errno.ENOSPC, f"No space left on device (injected by {FAULT_ENV})", str(path))


def refuse_existing(output: Path, force: bool) -> None:
    """Refuse to replace a non-empty ``output`` without ``force`` (an empty folder is free),
    and an ``output`` that cannot be a folder (see :func:`check_output_dir`) even with it."""
    check_output_dir(output)
    if not output.exists():
        return
    if output.is_dir() and not any(output.iterdir()):
        return
    if not force:
        raise UserError(f"{output}: already exists and is not empty; pass --force to replace it")


@contextmanager
def staging_dir(output: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder beside ``output``, removed (with all it holds) when the block ends;
    what killed runs on ``output`` left there is removed first (:func:`clean_leftovers`)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(output.parent, output.name)
    kind = prefix.strip(".-") or "work"
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=temp_prefix(output, kind)) as tmp:
        yield Path(tmp)


def move_into_place(staged: Path, output: Path, staging: Path) -> None:
    """Put the directory ``staged`` at ``output``; an existing ``output`` is moved into
    ``staging`` first (deleted with it) and put back if the new one cannot be moved in."""
    if not (output.exists() or output.is_symlink()):
        os.replace(staged, output)
        return
    aside = staging / PREVIOUS
    os.replace(output, aside)
    try:
        os.replace(staged, output)
    except BaseException:
        os.replace(aside, output)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


@contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """A text file written beside ``path`` under a name no other process or thread uses, then
    renamed onto it: a reader never sees half a file, two writers of the same output never
    trip over one temporary name (each rename is whole; the last wins), and a failure leaves
    ``path`` as it was, with no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path, "write"), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        _injected_fault(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
