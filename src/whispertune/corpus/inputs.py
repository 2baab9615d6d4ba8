"""Expand what a user names on the command line (files, folders, globs, manifests) into the
list of audio files of a corpus job.

Why one sorted, de-duplicated list of absolute paths: it is the job's identity. Resuming
compares it with the finished shards (by path), and per-file outputs get their names from
it; the same command must give the same list on every run and on every machine that sees
the same shared storage.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from whispertune.data.convert import AUDIO_EXTENSIONS
from whispertune.errors import UserError

# Video containers FFmpeg reads as well (``whispertune transcribe`` takes them too).
MEDIA_EXTENSIONS = (*AUDIO_EXTENSIONS, ".aac", ".wma", ".mp4", ".mkv", ".mov", ".aiff", ".aif")
MANIFEST_EXTENSIONS = (".jsonl",)


def _is_media(path: Path) -> bool:
    return path.suffix.lower() in MEDIA_EXTENSIONS


def _from_manifest(path: Path) -> list[Path]:
    from whispertune.data.manifest import read_manifest

    return [s.audio_path for s in read_manifest(path)]


def _from_folder(folder: Path) -> list[Path]:
    found = [p for p in folder.rglob("*") if p.is_file() and _is_media(p)]
    if not found:
        raise UserError(
            f"{folder}: no audio files ({', '.join(e[1:] for e in MEDIA_EXTENSIONS)}) found"
        )
    return found


def _expand_one(item: str) -> list[Path]:
    path = Path(item).expanduser()
    if path.is_dir():
        return _from_folder(path)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_EXTENSIONS:
            return _from_manifest(path)
        return [path]  # any other file is audio: FFmpeg decides, a bad one is recorded
    if glob.has_magic(item):
        matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
        out: list[Path] = []
        for m in matches:
            p = Path(m)
            if p.is_dir():
                continue
            if p.suffix.lower() in MANIFEST_EXTENSIONS:
                out.extend(_from_manifest(p))
            elif _is_media(p):
                out.append(p)
        if not out:
            raise UserError(f"{item}: the pattern matches no audio file")
        return out
    raise UserError(f"{item}: no such file or folder")


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Every audio file named by ``inputs``, absolute, sorted and each once.

    A folder contributes its audio files (recursively, by extension), a glob its matches
    (``**`` recurses), a ``.jsonl`` manifest its ``audio.path`` entries, any other existing
    file itself. A name that matches nothing is an error before any work starts.
    """
    seen: set[Path] = set()
    for item in inputs:
        for p in _expand_one(str(item)):
            seen.add(p.resolve())
    if not seen:
        raise UserError("no audio files given")
    return sorted(seen)
