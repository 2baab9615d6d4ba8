"""Make a manifest from data as people have it: a folder of clips, or a CSV/TSV table.

Two layouts cover most home-made and public sets: a folder where each audio file has a
same-name transcript beside it (or one Kaldi-style ``<id> <text>`` file for all), and a table
with a path and a text column (Common Voice's ``path``/``sentence``/``locale`` TSVs). Every clip
is opened once to measure its duration, so a file that cannot be read is reported here, with
where it came from, rather than in the middle of training.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from whispertune.audio import AudioError
from whispertune.data.manifest import Sample, write_manifest
from whispertune.data.validate import measure_duration
from whispertune.errors import UserError
from whispertune.languages import UnknownLanguageError, language_code, language_name

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm")
# Names of a single transcript file for a whole folder, tried in this order.
TRANSCRIPT_FILES = ("transcripts.txt", "text")


def normalize_language(value: str) -> str:
    """Whisper's English name, capitalized (``zh``, ``zh-CN``, ``chinese`` -> ``Chinese``).

    Common Voice locales carry a region (``zh-CN``, ``pt-BR``) that Whisper does not know; the
    part before it is the language.
    """
    try:
        code = language_code(value)
    except UnknownLanguageError:
        base = value.replace("_", "-").split("-")[0]
        if not base or base == value:
            raise
        code = language_code(base)
    return language_name(code).title()


_T = TypeVar("_T")


@dataclass(kw_only=True)
class _ManifestOutput:
    """``--output``, ``--force`` and ``--language`` of both converters: one definition, so
    ``from-folder`` and ``from-tsv`` take and describe them the same way."""

    output: Path = field(metadata={"help": "manifest to write", "metavar": "OUT"})
    force: bool = field(default=False, metadata={"help": "overwrite --output when it exists"})
    language: str | None = field(
        default=None,
        metadata={
            "help": "language of the clips (from-tsv: of rows without a language value), a "
            "Whisper name or code such as Chinese or zh (default: none; Whisper then detects it)"
        },
    )

    def checked(self) -> tuple[Path, str | None]:
        """The output (refused when it exists without --force) and the language as a Whisper
        name: checked before any clip is opened."""
        output = Path(self.output)
        if output.exists() and not self.force:
            raise UserError(f"{output}: already exists; pass --force to overwrite it")
        return output, normalize_language(self.language) if self.language else None


def _measuring(items: list[_T]) -> Iterator[_T]:
    """``items`` with a bar on a terminal: both converters open every clip once."""
    from tqdm import tqdm

    return iter(tqdm(items, desc="measuring", unit="file", disable=None))


def _measured_sample(audio: Path, sentence: str, language: str | None) -> Sample:
    """A manifest line for one clip, its duration measured from the file: both converters
    open every clip here, so an unreadable one is reported (AudioError) with where it came
    from, not in the middle of training. The path is made absolute without resolving links
    (a link is where the user keeps the clip)."""
    duration = measure_duration(audio)
    return Sample(
        audio_path=Path(os.path.abspath(audio)),
        sentence=sentence,
        language=language,
        duration=round(duration, 2),
    )


def _write(samples: list[Sample], options: _ManifestOutput, absolute: Iterable[Path] = ()) -> None:
    write_manifest(samples, options.output, force=options.force, keep_absolute=set(absolute))


# --- from a folder --------------------------------------------------------------------------


@dataclass(kw_only=True)
class FolderOptions(_ManifestOutput):
    """Options of ``whispertune data from-folder``."""

    folder: Path = field(
        metadata={"positional": True, "help": "folder with the audio files (searched recursively)"}
    )
    text_ext: str = field(
        default=".txt",
        metadata={"help": "extension of the transcript file beside each audio file"},
    )
    transcripts: Path | None = field(
        default=None,
        metadata={
            "help": "one file of '<id> <text>' lines (Kaldi style; id = audio file name without "
            "extension) for clips without their own transcript file (default: "
            + " or ".join(TRANSCRIPT_FILES)
            + " in the folder, when there)",
            "metavar": "FILE",
        },
    )


@dataclass
class FolderResult:
    output: Path
    written: int
    no_transcript: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unused_transcripts: int = 0


def _read_transcript_table(path: Path) -> dict[str, str]:
    """``<id> <text>`` lines; the text may be empty (a no-speech clip)."""
    table: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read transcripts ({e})") from e
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        key = parts[0]
        if key in table:
            logger.warning("%s:%d: id %s appears again; the later line wins", path, number, key)
        table[key] = parts[1].strip() if len(parts) > 1 else ""
    return table


def _read_text_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: transcript is not UTF-8 text") from e
    # A transcript wrapped over several lines is still one utterance.
    return " ".join(text.split()) if "\n" in text.strip() else text.strip()


def manifest_from_folder(options: FolderOptions) -> FolderResult:
    """Write a manifest of every audio file in a folder that has a transcript."""
    folder = Path(options.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    output, language = options.checked()
    text_ext = options.text_ext if options.text_ext.startswith(".") else "." + options.text_ext

    table_path = options.transcripts
    if table_path is None:
        table_path = next((folder / n for n in TRANSCRIPT_FILES if (folder / n).is_file()), None)
    elif not Path(table_path).is_file():
        raise UserError(f"{table_path}: transcripts file not found")
    table = _read_transcript_table(Path(table_path)) if table_path else {}
    if table_path:
        logger.info("%d transcripts in %s", len(table), table_path)

    audio_files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )
    if not audio_files:
        raise UserError(
            f"{folder}: no audio files ({', '.join(e[1:] for e in AUDIO_EXTENSIONS)}) found"
        )
    result = FolderResult(output=output, written=0)
    samples: list[Sample] = []
    used: set[str] = set()
    for audio in _measuring(audio_files):
        text_file = audio.with_suffix(text_ext)
        if text_file.is_file():
            text = _read_text_file(text_file)
        elif audio.stem in table:
            text = table[audio.stem]
            used.add(audio.stem)
        else:
            result.no_transcript.append(audio)
            continue
        try:
            samples.append(_measured_sample(audio, text, language))
        except AudioError as e:
            result.unreadable.append(f"{audio}: {e}")
    result.unused_transcripts = len(set(table) - used)
    if not samples:
        raise UserError(
            f"{folder}: none of the {len(audio_files)} audio files has a readable audio and a "
            f"transcript ({text_ext} beside it"
            + (f" or a line in {table_path}" if table_path else "")
            + ")"
        )
    _write(samples, options)
    result.written = len(samples)
    logger.info("wrote %d samples to %s", len(samples), output)
    return result


# --- from a CSV/TSV table -------------------------------------------------------------------


@dataclass(kw_only=True)
class TableOptions(_ManifestOutput):
    """Options of ``whispertune data from-tsv``."""

    table: Path = field(
        metadata={"positional": True, "help": "the CSV or TSV file, with a header row"}
    )
    audio_dir: Path | None = field(
        default=None,
        metadata={
            "help": "folder the paths of the table are relative to (default: the table's "
            "folder, then its clips/ subfolder as in Common Voice)",
            "metavar": "DIR",
        },
    )
    path_column: str = field(default="path", metadata={"help": "column with the audio path"})
    text_column: str = field(default="sentence", metadata={"help": "column with the transcript"})
    language_column: str = field(
        default="locale",
        metadata={
            "help": "column with each row's language (a Whisper name/code or a locale such as "
            "zh-CN); ignored when the table has no such column"
        },
    )
    delimiter: str | None = field(
        default=None,
        metadata={"help": "column separator (default: tab for .tsv, comma for .csv, else guessed)"},
    )


@dataclass
class TableResult:
    output: Path
    rows: int
    written: int
    # "table:line: what is wrong" for each row left out.
    skipped: list[str] = field(default_factory=list)


def _delimiter(path: Path, sample: str, given: str | None) -> str:
    if given:
        return "\t" if given in ("\\t", "tab") else given
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,;|").delimiter
    except csv.Error:
        return "\t"


def manifest_from_table(options: TableOptions) -> TableResult:
    """Write a manifest from a CSV/TSV table; rows that cannot be used are listed, not fatal."""
    table = Path(options.table)
    if not table.is_file():
        raise UserError(f"{table}: table not found")
    output, default_language = options.checked()
    if options.audio_dir is not None:
        if not Path(options.audio_dir).is_dir():
            raise UserError(f"{options.audio_dir}: --audio-dir is not a folder")
        search = [Path(options.audio_dir)]
    else:
        search = [table.resolve().parent, table.resolve().parent / "clips"]

    try:
        text = table.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{table}: not UTF-8 text") from e
    delimiter = _delimiter(table, text[:4096], options.delimiter)
    # Common Voice TSVs are unquoted and their sentences contain quote characters.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if not header:
        raise UserError(f"{table}: empty table (no header row)")
    header = [h.strip() for h in header]
    for needed, flag in (
        (options.path_column, "--path-column"),
        (options.text_column, "--text-column"),
    ):
        if needed not in header:
            raise UserError(
                f"{table}:1: no column {needed!r} (set {flag}); columns: {', '.join(header)}"
            )
    path_i, text_i = header.index(options.path_column), header.index(options.text_column)
    lang_i = header.index(options.language_column) if options.language_column in header else None

    rows: list[tuple[int, list[str]]] = []
    last_line = reader.line_num
    for row in reader:
        first_line, last_line = last_line + 1, reader.line_num
        if row and any(cell.strip() for cell in row):
            rows.append((first_line, row))

    result = TableResult(output=output, rows=len(rows), written=0)
    samples: list[Sample] = []
    languages: dict[str, str] = {}
    absolute: list[Path] = []
    for line, row in _measuring(rows):
        where = f"{table}:{line}"
        if len(row) <= max(path_i, text_i):
            result.skipped.append(f"{where}: {len(row)} columns, expected {len(header)}")
            continue
        rel = row[path_i].strip()
        if not rel:
            result.skipped.append(f"{where}: empty {options.path_column!r}")
            continue
        language = default_language
        raw_language = row[lang_i].strip() if lang_i is not None and lang_i < len(row) else ""
        if raw_language:
            if raw_language not in languages:
                try:
                    languages[raw_language] = normalize_language(raw_language)
                except UnknownLanguageError:
                    languages[raw_language] = ""
            language = languages[raw_language]
            if not language:
                result.skipped.append(f"{where}: unknown language {raw_language!r}")
                continue
        rel_path = Path(rel).expanduser()
        candidates = [rel_path] if rel_path.is_absolute() else [d / rel_path for d in search]
        audio = next((c for c in candidates if c.exists()), candidates[0])
        try:
            samples.append(_measured_sample(audio, row[text_i].strip(), language))
        except AudioError as e:
            result.skipped.append(f"{where}: {e}: {audio}")
            continue
        if rel_path.is_absolute():
            absolute.append(samples[-1].audio_path)
    for message in result.skipped:
        logger.debug("skipped %s", message)
    if not samples:
        raise UserError(
            f"{table}: none of the {len(rows)} rows could be used"
            + (f"; first problem: {result.skipped[0]}" if result.skipped else "")
        )
    _write(samples, options, absolute)
    result.written = len(samples)
    logger.info("wrote %d of %d rows to %s", len(samples), len(rows), output)
    return result
