"""The output folder of a corpus job: result shards, error shards, the job's settings, and the
done-set that makes a re-run resume.

Layout of ``--output DIR``::

    corpus.json                      what produced the shards (model, decoding options)
    part-<run>-<n>.jsonl|.parquet    finished rows: manifest lines (see docs/corpus.md)
    errors-<run>-<n>.jsonl           files that could not be decoded, with the error
    manifest.jsonl                   every part's rows in input order, once all files are done
    files/<stem>.srt|.json           optional per-file outputs

Why this design: a shard is written under a temporary name and renamed when complete, so a
driver killed at any moment leaves whole shards and no half lines. The done-set is read back
from the shards themselves (nothing else is trusted), so a re-run skips exactly the files in
a finished shard: the rows of a shard that was being filled when the driver died were never
renamed into place and are decoded again. ``<run>`` is unique per run, so two runs never
write the same shard name.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whispertune.errors import UserError
from whispertune.staging import atomic_text_file

logger = logging.getLogger(__name__)

SETTINGS_FILE = "corpus.json"
MANIFEST_FILE = "manifest.jsonl"
FORMATS = ("jsonl", "parquet")


def part_files(output: Path) -> list[Path]:
    """The finished result shards of ``output`` (temporary files start with a dot)."""
    return sorted(
        p for p in output.glob("part-*") if p.suffix in (".jsonl", ".parquet") and p.is_file()
    )


def error_files(output: Path) -> list[Path]:
    return sorted(p for p in output.glob("errors-*.jsonl") if p.is_file())


def read_part(path: Path) -> list[dict[str, Any]]:
    """The rows of one finished shard, as manifest lines (dicts)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_errors(output: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in error_files(output):
        with open(path, encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def done_paths(output: Path) -> tuple[set[str], set[str]]:
    """(paths with a result row, paths with an error row) in the finished shards."""
    done = {row["audio"]["path"] for p in part_files(output) for row in read_part(p)}
    failed = {row["path"] for row in read_errors(output)}
    return done, failed


def check_settings(output: Path, settings: dict[str, Any]) -> None:
    """Record what produces the shards; refuse to mix rows of another model or other
    decoding options into the same folder (the resumed manifest would be two manifests)."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text("utf-8"))
        if before != settings:
            changed = sorted(
                k for k in set(before) | set(settings) if before.get(k) != settings.get(k)
            )
            raise UserError(
                f"{output}: holds results of other settings ({', '.join(changed)} differ, "
                f"see {path}); use another --output, or remove it to start over"
            )
        return
    with atomic_text_file(path) as fh:
        fh.write(json.dumps(settings, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def parquet_schema() -> Any:
    """One schema for every Parquet shard: inferred per shard, a shard whose files all lack
    speech would type ``sentences`` as a list of nulls, and the folder would not read as one
    table (``ray.data.read_parquet``, pandas)."""
    import pyarrow as pa

    sentence = pa.struct(
        [
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("text", pa.string()),
            ("avg_logprob", pa.float64()),
            ("no_speech_prob", pa.float64()),
        ]
    )
    return pa.schema(
        [
            ("audio", pa.struct([("path", pa.string())])),
            ("sentence", pa.string()),
            ("language", pa.string()),
            ("sentences", pa.list_(sentence)),
            ("duration", pa.float64()),
            ("avg_logprob", pa.float64()),
            ("no_speech_prob", pa.float64()),
        ]
    )


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(pa.Table.from_pylist(rows, schema=parquet_schema()), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_text_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@dataclass
class ShardWriter:
    """Collects rows and writes them as one shard when ``shard_size`` rows are held or
    ``max_seconds`` have passed since the last shard (so a slow corpus still lands work
    regularly: at most that much is decoded again after a crash)."""

    output: Path
    format: str = "jsonl"
    shard_size: int = 100
    max_seconds: float = 60.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    shards: int = 0
    run: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S-") + uuid.uuid4().hex[:6])
    _last: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"unknown format {self.format!r}; use one of {', '.join(FORMATS)}")
        self.output.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> bool:
        """Hold a result row or an error row; returns True when a shard was written."""
        if row is not None:
            self.rows.append(row)
        if error is not None:
            self.errors.append(error)
        held = len(self.rows) + len(self.errors)
        if held >= self.shard_size or (held and time.monotonic() - self._last >= self.max_seconds):
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write what is held: errors first, then results, each shard renamed into place."""
        self._last = time.monotonic()
        if not self.rows and not self.errors:
            return
        name = f"{self.run}-{self.shards:05d}"
        if self.errors:
            _write_jsonl(self.output / f"errors-{name}.jsonl", self.errors)
        if self.rows:
            path = self.output / f"part-{name}.{self.format}"
            if self.format == "parquet":
                _write_parquet(path, self.rows)
            else:
                _write_jsonl(path, self.rows)
        logger.info("shard %s: %d rows, %d errors", name, len(self.rows), len(self.errors))
        self.shards += 1
        self.rows = []
        self.errors = []


def write_manifest(output: Path, order: list[Path]) -> Path:
    """``manifest.jsonl``: every result row of the finished shards, in input order (the file
    ``whispertune train`` and ``data validate`` read). Rows of files no longer named in the
    inputs are kept after the others."""
    rows = {row["audio"]["path"]: row for p in part_files(output) for row in read_part(p)}
    rank = {str(p): i for i, p in enumerate(order)}
    ordered = sorted(rows, key=lambda k: (rank.get(k, len(rank)), k))
    path = output / MANIFEST_FILE
    _write_jsonl(path, (_drop_nulls(rows[k]) for k in ordered))
    return path


def _drop_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet gives every row every column; a manifest line has no ``null`` numbers."""
    return {k: v for k, v in row.items() if v is not None}
