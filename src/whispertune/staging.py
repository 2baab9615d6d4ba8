"""Write a model directory beside its destination, then move it in.

Why: an export, a merge or a conversion takes minutes, can fail or be cancelled half-way, and
may replace an earlier output (``--force``). Built in a temporary folder next to ``output`` (the
same file system, so moving it is a rename), a half-written model never sits at ``output``;
replacing moves the old output aside into that temporary folder before the new one is moved in,
so a process killed between the two renames leaves the old model (in the temporary folder), never
neither. The temporary folder, with the old output in it, is removed when the work ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from whispertune.errors import UserError


def refuse_existing(output: Path, force: bool) -> None:
    """Refuse to replace a non-empty ``output`` without ``force`` (an empty folder is free)."""
    if not output.exists():
        return
    if output.is_dir() and not any(output.iterdir()):
        return
    if not force:
        raise UserError(f"{output}: already exists and is not empty; pass --force to replace it")


@contextmanager
def staging_dir(output: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder beside ``output``, removed (with all it holds) when the block ends."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=prefix) as tmp:
        yield Path(tmp)


def move_into_place(staged: Path, output: Path, staging: Path) -> None:
    """Put the directory ``staged`` at ``output``; an existing ``output`` is moved into
    ``staging`` first (deleted with it) and put back if the new one cannot be moved in."""
    if not (output.exists() or output.is_symlink()):
        os.replace(staged, output)
        return
    aside = staging / "previous"
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
