"""Prepare AISHELL-1 (OpenSLR 33) as whispertune manifests, streaming and resumable.

AISHELL-1 ships as one 15 GB ``data_aishell.tgz`` holding the transcript and one nested
``wav/SPEAKER.tar.gz`` per speaker (members ``train|dev|test/SPEAKER/ID.wav``). Unpacking it
whole would need twice its size on disk and, done naively, a lot of RAM; so both layers are read
as streams (``GzipFile`` under a stream-mode ``tarfile``) and only the WAV files are written out.
Each gzip stream is read to its end, so its CRC is checked (``r|gz`` never checks it, and stream
tarfile takes a damaged header for the end of the archive: a damaged archive used to give part of
a speaker, silently); a speaker's WAVs are renamed into place and the speaker marked done only
once its tarball verified, and the run is complete only once the whole archive did.

Why the state folder (``OUT/.whispertune-aishell/``):

- a gzip stream cannot seek, so an interrupted run has to read the archive again; a marker per
  finished speaker lets the re-run skip the writing (and measuring) of everything already done;
- the transcript may come before or after the speaker tarballs inside the archive, so each
  speaker's utterances (split, path, duration) are recorded in its marker and joined with the
  transcript only at the end, when the manifests are written (atomically);
- it identifies the folder as ours, which is how a re-run is told apart from a foreign,
  non-empty folder that we refuse to write into without ``--force``.

The user's archive is only ever opened for reading. Utterances with no transcript line (the real
corpus has some) are counted, logged and listed in ``OUT/missing_transcript.txt``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import tarfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from whispertune.data.manifest import Sample, write_manifest
from whispertune.errors import UserError

logger = logging.getLogger(__name__)

AISHELL_URL = "https://www.openslr.org/resources/33/data_aishell.tgz"
AISHELL_MD5 = "2f494334227864a8a8fec932999db9d8"
ARCHIVE_NAME = "data_aishell.tgz"
STATE_DIR = ".whispertune-aishell"
_STATE_FILE = "state.json"
_COMMAND = "whispertune data aishell"
_STATE_VERSION = 2
# How much of the archive's head and tail goes into its fingerprint (with size and mtime): a
# full checksum of 15 GB costs a minute, and the streaming pass verifies the content anyway.
_FINGERPRINT_BYTES = 1 << 20
SPLITS = ("train", "dev", "test")

_TRANSCRIPT_RE = re.compile(r"(?:^|/)transcript/(aishell_transcript[^/]*\.txt)$")
_SPEAKER_TAR_RE = re.compile(r"(?:^|/)wav/([A-Za-z0-9_-]+)\.tar\.gz$")
_UTT_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
# If this many files of the outer archive in a row are not AISHELL's, fail early instead of
# reading 15 GB of something else.
_MAX_FOREIGN_FILES = 20
_CHUNK = 1 << 20
_CORRUPT_HINT = (
    f"the archive is truncated or corrupt (AISHELL-1's md5 is {AISHELL_MD5}); the speakers "
    "done so far are kept: fix the archive and re-run the same command to resume"
)


@dataclass(kw_only=True)
class AishellOptions:
    """Options of ``whispertune data aishell``."""

    archive: Path | None = field(
        default=None,
        metadata={
            "help": "the AISHELL-1 data_aishell.tgz you already have; it is only read, never "
            "changed or deleted (default: download it into OUT)",
            "metavar": "TGZ",
        },
    )
    out: Path = field(
        metadata={
            "help": "output folder: wav/, train.jsonl, dev.jsonl, test.jsonl; re-running the "
            "same command on it resumes an interrupted run",
            "metavar": "DIR",
        }
    )
    force: bool = field(
        default=False,
        metadata={
            "help": "write into OUT even if it is a non-empty folder this command did not "
            "create, and start over instead of resuming (nothing of yours is deleted)"
        },
    )
    language: str = field(
        default="Chinese", metadata={"help": 'the "language" written on every manifest line'}
    )
    dev_in_train: bool = field(
        default=True,
        metadata={
            "help": "also put the dev split into train.jsonl, as the seed project does "
            "(dev.jsonl is written either way)"
        },
    )
    url: str = field(
        default=AISHELL_URL,
        metadata={"help": "where to download data_aishell.tgz from when --archive is not given"},
    )
    md5: str = field(
        default=AISHELL_MD5,
        metadata={"help": "expected md5 of the download; an empty string skips the check"},
    )
    timeout: float = field(
        default=10.0,
        metadata={
            "help": "seconds to wait for the server when connecting and for each read; an "
            "offline machine fails after this long",
            "metavar": "SECONDS",
        },
    )


@dataclass
class AishellResult:
    """What a preparation produced; counts are utterances unless named otherwise."""

    out: Path
    train_manifest: Path
    dev_manifest: Path
    test_manifest: Path
    train: int = 0
    dev: int = 0
    test: int = 0
    hours: dict[str, float] = field(default_factory=dict)
    speakers: int = 0
    speakers_resumed: int = 0
    files_written: int = 0
    missing_transcript: int = 0
    transcript_without_audio: int = 0
    downloaded: bool = False


# --------------------------------------------------------------------------------------------
# state folder


def _atomic_write_text(path: Path, text: str) -> None:
    """Write then rename, so a reader (or a resumed run) never sees half a file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _State:
    """The ``OUT/.whispertune-aishell`` folder: run identity, speaker markers, transcript."""

    def __init__(self, out: Path) -> None:
        self.dir = out / STATE_DIR
        self.speakers_dir = self.dir / "speakers"
        self.file = self.dir / _STATE_FILE
        self.data: dict[str, Any] = {}

    def exists(self) -> bool:
        return self.file.is_file()

    def load(self) -> None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(
                f"{self.file}: unreadable state of a previous run ({e}); pass --force to start over"
            ) from e
        if not isinstance(data, dict) or data.get("command") != _COMMAND:
            raise UserError(f"{self.file}: not written by '{_COMMAND}'; pass --force to start over")
        self.data = data

    def reset(self) -> None:
        """Forget a previous run (only our own bookkeeping; extracted WAVs get overwritten)."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.data = {"command": _COMMAND, "version": _STATE_VERSION}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.file, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def marker(self, speaker: str) -> Path:
        return self.speakers_dir / f"{speaker}.json"

    def done_utterances(self, speaker: str, out: Path) -> list[dict[str, Any]] | None:
        """The speaker's recorded utterances if its marker exists and all its files are there."""
        path = self.marker(speaker)
        if not path.is_file():
            return None
        try:
            utts = json.loads(path.read_text(encoding="utf-8"))["utterances"]
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("%s: unreadable marker, redoing speaker %s", path, speaker)
            return None
        if not all((out / u["path"]).is_file() for u in utts):
            logger.info("speaker %s: files missing since the last run, redoing it", speaker)
            return None
        return utts

    def mark_done(self, speaker: str, utts: list[dict[str, Any]]) -> None:
        """Record a speaker as finished; called only once its tarball verified (gzip CRC and
        every member's size) and its files are in place."""
        self.speakers_dir.mkdir(parents=True, exist_ok=True)
        record = {"speaker": speaker, "utterances": utts}
        _atomic_write_text(self.marker(speaker), json.dumps(record, ensure_ascii=False) + "\n")

    def forget_speakers(self) -> None:
        """Drop every speaker marker (the WAVs stay, to be overwritten when re-extracted)."""
        if self.speakers_dir.exists():
            shutil.rmtree(self.speakers_dir)

    def all_markers(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        if self.speakers_dir.is_dir():
            for path in sorted(self.speakers_dir.glob("*.json")):
                try:
                    out[path.stem] = json.loads(path.read_text(encoding="utf-8"))["utterances"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise UserError(f"{path}: unreadable; pass --force to start over") from e
        return out

    @property
    def transcript(self) -> Path | None:
        name = self.data.get("transcript")
        return self.dir / name if name else None


def _check_out_dir(out: Path, state: _State, force: bool, archive: Path | None) -> None:
    """Refuse a non-empty folder that is not a previous run of this command (unless --force).

    The archive itself may sit in the folder: ``--archive DIR/data_aishell.tgz --out DIR`` is
    the natural call after downloading by hand.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if force:
        if out.exists() and any(out.iterdir()):
            logger.info("%s: --force: starting over in a non-empty folder", out)
        state.reset()
        return
    if state.exists():
        state.load()
        logger.info("%s: found a previous run of this command, resuming", out)
        return
    own = {archive.resolve()} if archive is not None else set()
    if out.exists() and any(p.resolve() not in own for p in out.iterdir()):
        raise UserError(
            f"{out}: folder is not empty and was not created by '{_COMMAND}'; "
            "choose an empty or new folder, or pass --force to write into it anyway"
        )
    state.reset()


# --------------------------------------------------------------------------------------------
# download


def _resolve(host: str, port: int, timeout: float) -> None:
    """Resolve ``host`` within ``timeout``: a broken resolver can otherwise hang far longer
    than the socket timeout, which does not cover DNS."""
    result: dict[str, BaseException | None] = {}

    def work() -> None:
        try:
            socket.getaddrinfo(host, port)
            result["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in result:
        raise TimeoutError(f"name lookup of {host} took more than {timeout:g} s")
    if result["error"] is not None:
        raise result["error"]


def _offline_error(url: str, reason: object, md5: str, part: Path) -> UserError:
    md5_note = f", md5 {md5}" if md5 else ""
    kept = (
        f" (the partial download {part} is kept: re-run when online to resume it)"
        if part.is_file()
        else ""
    )
    return UserError(
        f"cannot download {url}: {reason}. This machine looks offline or the server is "
        f"unreachable. Download {ARCHIVE_NAME} (about 15 GB{md5_note}) elsewhere, copy it to "
        f"this machine and pass --archive PATH/data_aishell.tgz{kept}"
    )


def _bar(**kwargs: Any) -> Any:
    """A byte progress bar on stderr, hidden under ``--quiet`` (logging above INFO)."""
    from tqdm import tqdm

    return tqdm(
        unit="B", unit_scale=True, disable=logger.getEffectiveLevel() > logging.INFO, **kwargs
    )


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh, _bar(total=path.stat().st_size, desc="md5") as bar:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def download_archive(url: str, dest: Path, *, md5: str = "", timeout: float = 10.0) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    The md5 is checked before the file gets its final name, so ``dest`` existing means a
    complete, verified download.
    """
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    parsed = urllib.parse.urlsplit(url)
    answered = False  # whether the server responded: tells "offline" from "connection lost"
    try:
        if parsed.hostname:
            _resolve(parsed.hostname, 80 if parsed.scheme == "http" else 443, timeout)
        request = urllib.request.Request(url, headers={"User-Agent": "whispertune"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # asked past the end: the .part is already complete
                response = None
            else:
                raise
        answered = True
        if response is not None:
            with response:
                content_range = response.headers.get("Content-Range", "")
                if have and (
                    response.status != 206 or not content_range.startswith(f"bytes {have}-")
                ):
                    logger.info("server ignored the resume request, downloading from the start")
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                if have:
                    logger.info("resuming download at %.1f MB", have / 1e6)
                with (
                    open(part, "ab" if have else "wb") as fh,
                    _bar(total=total, initial=have, desc=dest.name) as bar,
                ):
                    while chunk := response.read(_CHUNK):
                        fh.write(chunk)
                        bar.update(len(chunk))
                if total is not None and part.stat().st_size < total:
                    raise UserError(
                        f"download of {url} stopped early; re-run the same command to resume"
                    )
    except urllib.error.HTTPError as e:
        raise UserError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise _offline_error(url, e.reason, md5, part) from e
    except (TimeoutError, OSError, http.client.HTTPException) as e:
        if answered:
            raise UserError(
                f"download of {url} interrupted ({e}); re-run the same command to resume"
            ) from e
        raise _offline_error(url, e, md5, part) from e
    if md5:
        logger.info("checking the md5 of %s", part)
        got = _file_md5(part)
        if got != md5.lower():
            part.unlink()
            raise UserError(
                f"download of {url} is corrupt (md5 {got}, expected {md5}); removed it, "
                "re-run to download again"
            )
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# archive reading


class _CountingReader:
    """A read-only file wrapper that moves a byte progress bar: the compressed position is the
    only honest progress measure of a stream whose speaker count is unknown upfront."""

    def __init__(self, fh: IO[bytes], on_read: Callable[[int], Any]) -> None:
        self._fh = fh
        self._on_read = on_read

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._on_read(len(data))
        return data


def _safe_parts(member: tarfile.TarInfo, dest: Path, where: str) -> tuple[str, ...]:
    """The member's path parts, or UserError for an absolute path, ``..`` or a link."""
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, str(dest))
        except tarfile.FilterError as e:
            raise UserError(f"{where}: unsafe member {member.name!r} rejected ({e})") from e
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"{where}: member with an absolute path {name!r} rejected")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts or any("\\" in p for p in parts):
        raise UserError(f"{where}: member {name!r} points outside the output folder; rejected")
    return parts


class _ArchiveDamaged(Exception):
    """A gzip stream or tar inside the archive failed verification; the message says how."""


def _verify_to_end(gz: gzip.GzipFile) -> None:
    """Read a gzip stream to its end and insist that what follows the tar is zero padding.

    ``GzipFile`` checks the CRC-32 and length only when it reaches the end of the stream, and
    stream-mode ``tarfile`` takes a damaged member header for the end of the archive; so
    without this a damaged archive silently yields its first few members.
    """
    trailing = False
    try:
        while chunk := gz.read(_CHUNK):
            trailing = trailing or bool(chunk.strip(b"\0"))
    except (OSError, EOFError, zlib.error) as e:
        raise _ArchiveDamaged(f"gzip check failed: {e}") from e
    if trailing:
        raise _ArchiveDamaged("data after what reads as the end of the tar (a damaged header)")


def _copy_member(src: IO[bytes], dst_path: Path, member: tarfile.TarInfo) -> None:
    """Copy one member, checking that it is as long as its header says."""
    copied = 0
    with open(dst_path, "wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            copied += len(chunk)
    if copied != member.size:
        raise _ArchiveDamaged(f"{member.name}: {copied} of its {member.size} bytes")


def _extract_speaker(
    fileobj: IO[bytes], speaker: str, out: Path, where: str
) -> list[dict[str, Any]]:
    """Write the WAVs of one nested speaker tarball; their (id, split, path, duration).

    The WAVs are written under ``.part`` names and renamed into place only once the whole
    tarball verified (gzip CRC, member sizes, nothing after the end marker): a damaged speaker
    leaves no file behind and no marker, so the re-run redoes it.
    """
    import soundfile as sf

    wav_root = out / "wav"
    utts: list[dict[str, Any]] = []
    pending: list[tuple[Path, Path]] = []
    tmp: Path | None = None
    gz = gzip.GzipFile(fileobj=fileobj, mode="rb")
    try:
        with tarfile.open(fileobj=gz, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                parts = _safe_parts(member, wav_root, where)
                if not member.isfile():
                    if not member.isdir():
                        logger.warning("%s: skipping %s (not a regular file)", where, member.name)
                    continue
                if not parts[-1].lower().endswith(".wav"):
                    logger.debug("%s: skipping %s (not a .wav)", where, member.name)
                    continue
                if len(parts) != 3 or parts[0] not in SPLITS or not _UTT_ID_RE.match(parts[1]):
                    logger.warning(
                        "%s: skipping %s (expected train|dev|test/SPEAKER/ID.wav)",
                        where,
                        member.name,
                    )
                    continue
                split, spk_dir, name = parts
                utt_id = name[: -len(".wav")]
                if not _UTT_ID_RE.match(utt_id):
                    logger.warning("%s: skipping %s (odd utterance id)", where, member.name)
                    continue
                rel = PurePosixPath("wav", split, spk_dir, name)
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(name + ".part")
                src = tar.extractfile(member)
                if src is None:  # cannot happen for a regular file; keeps the type checker honest
                    continue
                _copy_member(src, tmp, member)
                try:
                    info = sf.info(str(tmp))
                    duration = info.frames / info.samplerate
                except Exception as e:  # libsndfile raises RuntimeError/LibsndfileError
                    tmp.unlink(missing_ok=True)
                    logger.warning("%s: skipping %s (unreadable WAV: %s)", where, member.name, e)
                    continue
                pending.append((tmp, target))
                tmp = None
                utts.append(
                    {
                        "id": utt_id,
                        "split": split,
                        "path": rel.as_posix(),
                        "duration": round(duration, 2),
                    }
                )
        _verify_to_end(gz)
    except BaseException:
        for path in [p for p, _ in pending] + ([tmp] if tmp is not None else []):
            path.unlink(missing_ok=True)
        raise
    for part, target in pending:
        os.replace(part, target)
    if not utts:
        logger.warning("%s: no train|dev|test/SPEAKER/*.wav inside", where)
    return utts


def _check_gzip(archive: Path) -> None:
    """Fail on a non-gzip file before anything is created in OUT (it is the commonest mistake:
    the transcript-only resource, a zip, an HTML error page saved as .tgz)."""
    try:
        with open(archive, "rb") as fh:
            magic = fh.read(2)
    except OSError as e:
        raise UserError(f"{archive}: cannot read the archive ({e.strerror})") from e
    if magic != b"\x1f\x8b":
        raise _open_failed(archive, "not a gzip file")


def _open_failed(archive: Path, e: object) -> UserError:
    return UserError(
        f"{archive}: not a readable .tar.gz ({e}); expected AISHELL-1's {ARCHIVE_NAME} "
        "(OpenSLR 33) — a truncated download reads like this too"
    )


def _stream_archive(
    archive: Path,
    out: Path,
    state: _State,
    result: AishellResult,
    after_speaker: Callable[[str], None] | None,
) -> None:
    """One pass over the outer archive: save the transcript, extract unfinished speakers.

    The gzip layer is ``GzipFile`` under an uncompressed stream-mode tar (not ``r|gz``, whose
    decompressor never checks the CRC), read to its end: damage anywhere in the archive is an
    error, and the run is recorded complete only after that check.
    """
    seen_aishell = False
    foreign_run = 0
    foreign_names: list[str] = []
    stopped_early = False
    with open(archive, "rb") as raw, _bar(total=archive.stat().st_size, desc="AISHELL") as bar:
        reader = _CountingReader(raw, bar.update)
        gz = gzip.GzipFile(fileobj=reader, mode="rb")  # type: ignore[arg-type]
        try:
            outer = tarfile.open(fileobj=gz, mode="r|")  # type: ignore[call-overload]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise _open_failed(archive, e) from e
        try:
            with outer:
                for member in outer:
                    _safe_parts(member, out, str(archive))
                    if not member.isfile():
                        continue
                    name = member.name
                    if m := _TRANSCRIPT_RE.search(name):
                        seen_aishell = True
                        foreign_run = 0
                        src = outer.extractfile(member)
                        assert src is not None
                        state.dir.mkdir(parents=True, exist_ok=True)
                        tmp = state.dir / (m.group(1) + ".part")
                        with open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst, _CHUNK)
                        os.replace(tmp, state.dir / m.group(1))
                        state.data["transcript"] = m.group(1)
                        state.save()
                        continue
                    if m := _SPEAKER_TAR_RE.search(name):
                        seen_aishell = True
                        foreign_run = 0
                        speaker = m.group(1)
                        result.speakers += 1
                        if state.done_utterances(speaker, out) is not None:
                            result.speakers_resumed += 1
                            bar.set_postfix(speaker=speaker, refresh=False)
                            continue
                        src = outer.extractfile(member)
                        assert src is not None
                        where = f"{archive}:{name}"
                        try:
                            utts = _extract_speaker(src, speaker, out, where)
                        except (
                            tarfile.TarError,
                            zlib.error,
                            EOFError,
                            gzip.BadGzipFile,
                            _ArchiveDamaged,
                        ) as e:
                            raise UserError(
                                f"{where}: damaged ({e}); none of speaker {speaker}'s files "
                                f"were kept; {_CORRUPT_HINT}"
                            ) from e
                        state.mark_done(speaker, utts)
                        result.files_written += len(utts)
                        bar.set_postfix(speaker=speaker, files=result.files_written, refresh=False)
                        if after_speaker is not None:
                            after_speaker(speaker)
                        continue
                    logger.debug("%s: skipping %s (not part of AISHELL-1)", archive, name)
                    foreign_run += 1
                    foreign_names.append(name)
                    if not seen_aishell and foreign_run >= _MAX_FOREIGN_FILES:
                        stopped_early = True
                        break
            if seen_aishell and not stopped_early:
                _verify_to_end(gz)
        except UserError:
            raise
        except _ArchiveDamaged as e:
            raise UserError(
                f"{archive}: damaged outside the speaker tarballs, in the transcript or a "
                f"tar header ({e}); {_CORRUPT_HINT}"
            ) from e
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise UserError(f"{archive}: unreadable ({e}); {_CORRUPT_HINT}") from e
    if not seen_aishell:
        shown = ", ".join(foreign_names[:5]) or "no files"
        raise UserError(
            f"{archive}: not the AISHELL-1 layout: expected data_aishell/transcript/"
            f"aishell_transcript_v0.8.txt and data_aishell/wav/SPEAKER.tar.gz, found {shown}"
        )


# --------------------------------------------------------------------------------------------
# transcript and manifests


def read_transcript(path: Path) -> dict[str, str]:
    """``ID word word ...`` lines → {ID: text with the word-segmentation spaces removed}."""
    texts: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1:
                logger.warning("%s:%d: %s has an empty transcript", path, number, fields[0])
            if fields[0] in texts:
                logger.warning("%s:%d: duplicate id %s, keeping the last", path, number, fields[0])
            texts[fields[0]] = "".join(fields[1:])
    return texts


def _write_manifests(
    options: AishellOptions, archive: Path, state: _State, result: AishellResult
) -> None:
    out = options.out
    transcript_path = state.transcript
    if transcript_path is None or not transcript_path.is_file():
        raise UserError(
            f"{archive}: no transcript/aishell_transcript_*.txt in the archive; "
            "is it AISHELL-1's data_aishell.tgz?"
        )
    texts = read_transcript(transcript_path)
    by_split: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    missing: list[str] = []
    seen: set[str] = set()
    for utts in state.all_markers().values():
        for u in utts:
            if u["id"] in seen:
                logger.warning("utterance %s appears twice in the archive, keeping one", u["id"])
                continue
            seen.add(u["id"])
            if u["id"] not in texts or not texts[u["id"]]:
                missing.append(u["id"])
                continue
            by_split[u["split"]].append(u)
    result.transcript_without_audio = len(set(texts) - seen)
    result.missing_transcript = len(missing)
    missing_file = out / "missing_transcript.txt"
    if missing:
        missing.sort()
        _atomic_write_text(missing_file, "".join(m + "\n" for m in missing))
        logger.warning(
            "%d utterance(s) have audio but no transcript and are left out of the manifests "
            "(listed in %s): %s%s",
            len(missing),
            missing_file,
            " ".join(missing[:5]),
            " ..." if len(missing) > 5 else "",
        )
    elif missing_file.exists():
        missing_file.unlink()
    if result.transcript_without_audio:
        logger.info(
            "%d transcript line(s) have no audio in the archive", result.transcript_without_audio
        )

    def samples(utts: list[dict[str, Any]]) -> list[Sample]:
        return [
            Sample(
                audio_path=out / u["path"],
                sentence=texts[u["id"]],
                language=options.language,
                duration=u["duration"],
            )
            for u in sorted(utts, key=lambda u: u["id"])
        ]

    train = by_split["train"] + (by_split["dev"] if options.dev_in_train else [])
    for path, utts in (
        (result.train_manifest, train),
        (result.dev_manifest, by_split["dev"]),
        (result.test_manifest, by_split["test"]),
    ):
        write_manifest(samples(utts), path, force=True)
    result.train, result.dev, result.test = len(train), len(by_split["dev"]), len(by_split["test"])
    result.hours = {
        "train": sum(u["duration"] for u in train) / 3600,
        "dev": sum(u["duration"] for u in by_split["dev"]) / 3600,
        "test": sum(u["duration"] for u in by_split["test"]) / 3600,
    }
    if not train and not by_split["test"]:
        raise UserError(f"{archive}: no utterance with both audio and transcript found")


# --------------------------------------------------------------------------------------------
# entry point


def _archive_identity(archive: Path) -> dict[str, Any]:
    """Name, size, mtime and a hash of the first and last MiB: a replaced or repaired archive
    (new bytes, or a new copy) differs, so a re-run reads it again instead of keeping what the
    previous archive gave."""
    stat = archive.stat()
    digest = hashlib.sha256()
    with open(archive, "rb") as fh:
        digest.update(fh.read(_FINGERPRINT_BYTES))
        fh.seek(max(0, stat.st_size - _FINGERPRINT_BYTES))
        digest.update(fh.read(_FINGERPRINT_BYTES))
    return {
        "name": archive.name,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "head_tail_sha256": digest.hexdigest(),
    }


@contextlib.contextmanager
def _log_interrupt(out: Path) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        logger.warning("interrupted; re-run the same command to resume where it stopped (%s)", out)
        raise


def prepare_aishell(
    options: AishellOptions, progress: Callable[[str], None] | None = None
) -> AishellResult:
    """Turn AISHELL-1's ``data_aishell.tgz`` into ``OUT/{train,dev,test}.jsonl`` plus WAVs.

    ``progress`` is called with the speaker id each time a speaker's files are complete and
    recorded (the byte-level tqdm bar is shown regardless); an exception it raises stops the
    run as an interruption would, which is how the resume logic is tested.
    """
    out = Path(options.out).expanduser()
    archive = Path(options.archive).expanduser() if options.archive is not None else None
    if archive is not None:
        if not archive.exists():
            raise UserError(f"{archive}: archive not found")
        if not archive.is_file():
            raise UserError(f"{archive}: not a file (expected {ARCHIVE_NAME})")
        _check_gzip(archive)
    state = _State(out)
    _check_out_dir(out, state, options.force, archive)
    out.mkdir(parents=True, exist_ok=True)
    state.save()

    downloaded = False
    if archive is None:
        archive = out / ARCHIVE_NAME
        if not archive.is_file():
            logger.info("downloading %s to %s", options.url, archive)
            download_archive(options.url, archive, md5=options.md5, timeout=options.timeout)
            downloaded = True

    identity = _archive_identity(archive)
    if state.data.get("archive") not in (None, identity):
        logger.warning(
            "%s: not the archive of the previous run in %s (size, time or content changed): "
            "reading it from the start",
            archive,
            out,
        )
        state.forget_speakers()
        state.data["complete"] = False
    state.data["archive"] = identity
    state.save()

    result = AishellResult(
        out=out,
        train_manifest=out / "train.jsonl",
        dev_manifest=out / "dev.jsonl",
        test_manifest=out / "test.jsonl",
        downloaded=downloaded,
    )
    complete = bool(state.data.get("complete")) and all(
        state.done_utterances(s, out) is not None for s in state.all_markers()
    )
    with _log_interrupt(out):
        if complete:
            logger.info("%s: archive already extracted, rewriting the manifests", out)
            result.speakers = result.speakers_resumed = len(state.all_markers())
        else:
            state.data["complete"] = False
            state.save()
            _stream_archive(archive, out, state, result, progress)
            state.data["complete"] = True
            state.save()
        _write_manifests(options, archive, state, result)
    logger.info(
        "AISHELL-1 ready in %s: train %d, dev %d, test %d utterances (%d speakers, %d resumed)",
        out,
        result.train,
        result.dev,
        result.test,
        result.speakers,
        result.speakers_resumed,
    )
    if downloaded or archive.parent.resolve() == out.resolve():
        logger.info("%s is no longer needed and can be deleted to free space", archive)
    return result
