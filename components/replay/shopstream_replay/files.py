"""Files of records: CSV, JSON Lines, Parquet, read row by row with where each row is.

A row's EventId is its own (an `EventId` column with a valid id: a lake export, say), else
`rp-<first 12 hex of the file's SHA-256>-<line or row>`: the same file replayed again makes
the same ids, so the stores keep one copy. CSV and JSON Lines count lines from 1 (a CSV's
header is line 1), Parquet counts rows from 1.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .mapping import Kind, Row, auto_mapping, detect_kind, file_digest, make_row

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
SNIFF_LINES = 200  # JSON Lines: the columns are the keys of this many first lines


@dataclass
class Item:
    """One record to replay: where it came from, the id it gets, its client fields (or why none)."""

    where: str
    event_id: str
    row: Row | None
    reason: str | None = None  # unreadable before any contract check (a line that is not JSON)
    mark: str | None = None  # the dead letter's or quarantined record's key, marked once it is replayed


@dataclass
class Table:
    """A source of rows with named columns: a file, or one file of a lake."""

    name: str
    columns: list[str]
    rows: Any  # () -> Iterator[(position, values | None, error | None)]
    total: int | None
    digest: str
    text: bool = False  # values are CSV strings
    mapping: dict[str, str] = field(default_factory=dict)

    def items(self, kind: Kind, explicit: dict[str, str]) -> Iterator[Item]:
        self.mapping = auto_mapping(self.columns, kind, explicit)
        for position, values, error in self.rows():
            derived = f"rp-{self.digest}-{position}"
            where = f"{self.name}:{position}"
            if values is None:
                yield Item(where, derived, None, error)
                continue
            row = make_row(values, self.mapping, kind, self.text)
            yield Item(where, row.event_id or derived, row)

    @property
    def ignored(self) -> list[str]:
        return [c for c in self.columns if c not in self.mapping]


def file_format(path: Path, given: str | None) -> str:
    fmt = given or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: say --format csv|jsonl|parquet (not known by its suffix)")
    return fmt


def open_file(path: Path, fmt: str | None = None) -> Table:
    fmt = file_format(path, fmt)
    digest = file_digest(path)
    if fmt == "csv":
        return _csv(path, digest)
    if fmt == "jsonl":
        return _jsonl(path, digest)
    if fmt == "parquet":
        return parquet_table(path.name, path.read_bytes(), digest)
    raise ValueError(f"unknown format {fmt!r}")


def _csv(path: Path, digest: str) -> Table:
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
        total = sum(1 for _ in csv.reader(f))

    def rows() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            while True:
                start = reader.line_num + 1 if reader.line_num else 2  # the line the record starts on
                try:
                    values = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    yield start, None, f"unreadable: CSV: {e}"
                    continue
                extra = values.pop(None, None)  # type: ignore[call-overload]
                if extra:
                    yield start, None, f"unreadable: CSV: {len(extra)} more cells than the header has columns"
                    continue
                yield start, values, None

    return Table(path.name, header, rows, total, digest, text=True)


def _jsonl(path: Path, digest: str) -> Table:
    columns: dict[str, None] = {}
    total = 0
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            total += 1
            if n < SNIFF_LINES:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    columns.update(dict.fromkeys(obj))

    def rows() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    yield n, None, f"invalid JSON: {e}"
                    continue
                if not isinstance(obj, dict):
                    yield n, None, f"invalid JSON: a line must hold an object, not {type(obj).__name__}"
                    continue
                yield n, obj, None

    return Table(path.name, list(columns), rows, total, digest)


def parquet_table(name: str, data: bytes, digest: str | None = None) -> Table:
    """A Parquet file's rows (from its bytes: a local file's or an S3 object's)."""
    file = pq.ParquetFile(io.BytesIO(data))
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()[:12]

    def rows() -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
        n = 0
        for batch in file.iter_batches(batch_size=10_000):
            for values in batch.to_pylist():
                n += 1
                yield n, values, None

    return Table(name, list(file.schema_arrow.names), rows, file.metadata.num_rows, digest)


def sniff_kind(table: Table, explicit: dict[str, str]) -> Kind:
    return detect_kind(table.columns, explicit)
