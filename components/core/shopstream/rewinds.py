"""Offset rewinds: where a stage read records again because the broker lost a tail.

The embedded broker can lose its last second in a crash (kill -9); a real Kafka can
truncate a log in an unclean leader election. The log is then a prefix of what it was,
and new records are appended at the lost offsets. A stage whose committed position lies
past the loss would skip those new records without a word; the drain and the streaming
source notice it (`shopstream.marks`) and read again from the newest offset still
intact. Each such rewind is recorded where `invoke audit` and the dashboard read it:

- the drain's in MongoDB, one document each in the batch's `rewinds` collection
  (`shopstream.adapters.mongo.collections`; `_id` names the event, so a run that dies
  and finds it again records it once);
- the streaming job's as JSON lines in `<run_dir>/streaming/rewinds.jsonl` (the job folder),
  one per query that rewound (each query keeps its own checkpoint, so each rewinds).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shopstream.locations import job_folder
from shopstream.settings import Settings

log = logging.getLogger(__name__)

STREAMING_FILE = "rewinds.jsonl"  # the streaming job's rewinds, in its job folder
DRAIN, STREAMING = "drain", "streaming"


@dataclass(frozen=True)
class Rewind:
    stage: str  # "drain" or "streaming"
    topic: str
    partition: int
    committed: int  # the offset the stage had committed (its position)
    resumed_from: int  # where it reads again from
    end: int  # the partition's end offset when the rewind was found
    at: datetime  # UTC
    reason: str  # "position past the end" or "records replaced" ...

    def describe(self) -> str:
        """The log line's words (both stages log every rewind at WARNING)."""
        return (
            f"{self.stage}: {self.topic}-{self.partition}: {self.reason}: committed offset {self.committed}, "
            f"end offset {self.end}; reading again from offset {self.resumed_from}"
        )


# -- the streaming job's file -----------------------------------------------------------
def streaming_file(settings: Settings) -> Path:
    """Where the streaming job's source records its rewinds: `STREAMING_FILE` in the job folder."""
    return job_folder(settings) / STREAMING_FILE


def append_line(path: Path, rewind: Rewind, **extra: Any) -> None:
    """One JSON line per rewind, synced: a rewind found is a rewind recorded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({**asdict(rewind), "at": rewind.at.isoformat(), **extra}) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> list[Rewind]:
    """The file's rewinds (none if it is absent; a line cut short by a crash is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            x = json.loads(line)
            out.append(
                Rewind(
                    stage=x["stage"],
                    topic=x["topic"],
                    partition=int(x["partition"]),
                    committed=int(x["committed"]),
                    resumed_from=int(x["resumed_from"]),
                    end=int(x["end"]),
                    at=datetime.fromisoformat(x["at"]),
                    reason=x["reason"],
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return out


# -- the drain's collection --------------------------------------------------------------
def drain_document(rewind: Rewind, group: str, key: str) -> dict[str, Any]:
    """`key` tells this rewind from another of the same partition (the mark that failed)."""
    return {
        "_id": f"{group}|{rewind.topic}|{rewind.partition}|{rewind.committed}|{key}",
        "Stage": rewind.stage,
        "Group": group,
        "Topic": rewind.topic,
        "Partition": rewind.partition,
        "Committed": rewind.committed,
        "ResumedFrom": rewind.resumed_from,
        "End": rewind.end,
        "At": rewind.at,
        "Reason": rewind.reason,
    }


def from_document(d: dict[str, Any]) -> Rewind:
    at = d["At"] if d["At"].tzinfo else d["At"].replace(tzinfo=UTC)
    return Rewind(
        stage=d.get("Stage", DRAIN),
        topic=d["Topic"],
        partition=int(d["Partition"]),
        committed=int(d["Committed"]),
        resumed_from=int(d["ResumedFrom"]),
        end=int(d["End"]),
        at=at,
        reason=d["Reason"],
    )


def drain_rewinds(collection: Any) -> list[Rewind]:
    """The drain's rewinds in their MongoDB collection (pymongo's errors pass through)."""
    return [from_document(d) for d in collection.find()]


def oldest_first(found: list[Rewind]) -> list[Rewind]:
    return sorted(found, key=lambda r: (r.at, r.stage, r.topic, r.partition))


def rewinds(settings: Settings) -> list[Rewind]:
    """Every recorded rewind of both stages, oldest first (a store that is absent or
    unreachable contributes none)."""
    from pymongo.errors import PyMongoError

    from shopstream.adapters.mongo import collections, database, mongo_client

    found = read_lines(streaming_file(settings))
    client = mongo_client(settings.mongo, timeout_ms=2000)
    try:
        found += drain_rewinds(collections(database(client, settings.mongo), settings.batch).rewinds)
    except PyMongoError as e:
        log.warning("the drain's rewinds are not readable now: %s", e)
    finally:
        client.close()
    return oldest_first(found)
