"""The ledger: one line for every record the ingestion API acknowledged (a 2xx).

The API appends `<topic>\\t<partition>\\t<offset>\\t<EventId>\\n` for each record the broker
acknowledged, in the same group commit as its journal, before answering. A record the
API publishes again (the broker lost it) gets a second line with its new position.
Files are `<journal_dir>/ledger/<slot>-<YYYYMMDDHH>.tsv` (the UTC hour they were written
in), kept for `api.ledger_retention_hours`. `invoke audit` reads them: they are the
truth every stage of the pipeline is checked against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shopstream.settings import Settings

SUFFIX = ".tsv"


@dataclass(frozen=True)
class Acked:
    topic: str
    partition: int
    offset: int
    event_id: str


def ledger_dir(settings: Settings) -> Path:
    return settings.journal_dir / "ledger"


def ledger_file(settings: Settings, slot: str, at: float | None = None) -> Path:
    hour = datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y%m%d%H")
    return ledger_dir(settings) / f"{slot}-{hour}{SUFFIX}"


def _hour(path: Path) -> datetime:
    """The UTC hour a ledger file was written in (its name's last part)."""
    return datetime.strptime(path.stem.rsplit("-", 1)[-1], "%Y%m%d%H").replace(tzinfo=UTC)


def line(topic: str, partition: int, offset: int, event_id: str) -> bytes:
    return f"{topic}\t{partition}\t{offset}\t{event_id}\n".encode()


def acknowledged(settings: Settings) -> Iterator[Acked]:
    """Every ledger line, oldest file first (a line cut short by a crash is skipped)."""
    folder = ledger_dir(settings)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: (p.stem.rsplit("-", 1)[-1], p.name)):
        with path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    continue
                parts = raw.decode("utf-8", "replace").rstrip("\n").split("\t")
                if len(parts) != 4:
                    continue
                topic, partition, offset, event_id = parts
                yield Acked(topic, int(partition), int(offset), event_id)


def oldest_hour(settings: Settings) -> datetime | None:
    """The start of the oldest hour the ledger still holds (what an audit covers)."""
    folder = ledger_dir(settings)
    return min((_hour(p) for p in folder.glob(f"*{SUFFIX}")), default=None) if folder.is_dir() else None


def prune(settings: Settings, now: float | None = None) -> int:
    """Delete ledger files older than the retention; how many were deleted."""
    now = time.time() if now is None else now
    cutoff = now - settings.api.ledger_retention_hours * 3600
    removed = 0
    folder = ledger_dir(settings)
    for path in folder.glob(f"*{SUFFIX}") if folder.is_dir() else []:
        if _hour(path).timestamp() + 3600 < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed
