"""What replay reads from and marks in the stores, each through its adapter.

- The destinations, asked which EventIds they hold already (`Destination.holding`): the
  lake's committed files (purchases) and MongoDB's events (events). So a replay is exact
  beyond the streaming job's dedupe window, and a second replay of the same records sends
  nothing.
- The dead letters (MongoDB `batch.dead_letter_collection`, written by the drain) and the
  quarantine (the lake's `streaming.quarantine_path`, written by the streaming job), and their
  marks: a replayed dead letter gets `ReplayedAt` and `ReplayedAs` (the EventId sent); a
  replayed quarantined record a document in `quarantine_replays`, `_id` "<topic>/<partition>/<offset>".
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from minio import Minio
from pymongo import UpdateOne

from shopstream.adapters.lake import LakeFiles
from shopstream.adapters.mongo import collections, database, mongo_client, quarantine_mark_id
from shopstream.adapters.s3 import read_object, s3_client
from shopstream.settings import Settings

from .files import Item, Table, parquet_table
from .mapping import from_record, safe_id

QUARANTINE_COLUMNS = ["Reason", "Value", "KafkaTopic", "KafkaPartition", "KafkaOffset"]


def committed_files(settings: Settings, bucket: str, prefix: str) -> tuple[Minio, list[str]]:
    """The committed Parquet files under a prefix of a bucket (the file sink's log decides)."""
    s3 = settings.s3.model_copy(update={"bucket": bucket})
    st = settings.streaming.model_copy(update={"output_path": prefix})
    client = s3_client(settings.s3)
    return client, sorted(LakeFiles(client, settings.model_copy(update={"s3": s3, "streaming": st})).committed())


def lake_tables(settings: Settings, bucket: str, prefix: str) -> Iterator[Table]:
    client, keys = committed_files(settings, bucket, prefix)
    for key in keys:
        data = read_object(client, bucket, key)
        if data is not None:
            yield parquet_table(key, data)


class Destination:
    """Which of some EventIds the store the records end in holds already."""

    def holding(self, ids: list[str]) -> set[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LakeDestination(Destination):
    """The lake's committed files, their EventId column read once per replay."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ids: set[str] | None = None

    def holding(self, ids: list[str]) -> set[str]:
        if self._ids is None:
            self._ids = set()
            client, keys = committed_files(self.settings, self.settings.s3.bucket, self.settings.streaming.output_path)
            for key in keys:
                data = read_object(client, self.settings.s3.bucket, key)
                if data is not None:
                    table = pq.read_table(io.BytesIO(data), columns=["EventId"])
                    self._ids.update(table.column("EventId").to_pylist())
        return self._ids.intersection(ids)


class EventsDestination(Destination):
    """MongoDB's events, whose `_id` is the EventId."""

    def __init__(self, settings: Settings) -> None:
        self.client = mongo_client(settings.mongo)
        self.events = collections(database(self.client, settings.mongo), settings.batch).events

    def holding(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(ids), 1000):
            found.update(d["_id"] for d in self.events.find({"_id": {"$in": ids[i : i + 1000]}}, {"_id": 1}))
        return found

    def close(self) -> None:
        self.client.close()


def _matches(reason: Any, wanted: str | None) -> bool:
    return wanted is None or (isinstance(reason, str) and wanted.lower() in reason.lower())


class DeadLetters:
    """The drain's dead letters (UserEvents records that broke the contract, or were no JSON)."""

    def __init__(self, settings: Settings, reason: str | None) -> None:
        self.client = mongo_client(settings.mongo)
        self.letters = collections(database(self.client, settings.mongo), settings.batch).dead_letters
        self.reason = reason
        self.already_replayed = 0
        self.total = 0
        for d in self.letters.find({}, {"Reason": 1, "ReplayedAt": 1}):
            if _matches(d.get("Reason"), reason):
                if d.get("ReplayedAt") is not None:
                    self.already_replayed += 1
                else:
                    self.total += 1

    def items(self) -> Iterator[Item]:
        for d in self.letters.find({}).sort("_id", 1):
            if d.get("ReplayedAt") is not None or not _matches(d.get("Reason"), self.reason):
                continue
            row, why = from_record(d.get("Value"))
            key = str(d["_id"])
            event_id = (row.event_id if row else None) or safe_id("dl-", key)
            yield Item(f"dead letter {key}", event_id, row, why, mark=key)

    def mark(self, items: Iterable[Item]) -> None:
        now = datetime.now(UTC)
        marks = [UpdateOne({"_id": i.mark}, {"$set": {"ReplayedAt": now, "ReplayedAs": i.event_id}}) for i in items]
        if marks:
            self.letters.bulk_write(marks, ordered=False)

    def close(self) -> None:
        self.client.close()


class Quarantine:
    """The streaming job's quarantine (PurchasedItem records that broke the contract): its
    committed files, raw value and reason per row; the marks in `quarantine_replays`."""

    def __init__(self, settings: Settings, reason: str | None) -> None:
        self.settings, self.reason = settings, reason
        self.client = mongo_client(settings.mongo)
        self.marks = collections(database(self.client, settings.mongo), settings.batch).quarantine_replays
        bucket = settings.s3.bucket
        s3, keys = committed_files(settings, bucket, settings.streaming.quarantine_path)
        self.rows: list[dict[str, Any]] = []
        for key in keys:
            data = read_object(s3, bucket, key)
            if data is not None:
                self.rows += pq.read_table(io.BytesIO(data), columns=QUARANTINE_COLUMNS).to_pylist()
        self.rows = [r for r in self.rows if _matches(r["Reason"], reason)]
        self.rows.sort(key=lambda r: (r["KafkaTopic"], r["KafkaPartition"], r["KafkaOffset"]))
        marked = {d["_id"] for d in self.marks.find({}, {"_id": 1})}
        fresh = [r for r in self.rows if quarantine_mark_id(r) not in marked]
        self.already_replayed = len(self.rows) - len(fresh)
        self.rows = fresh
        self.total = len(self.rows)

    def items(self) -> Iterator[Item]:
        for r in self.rows:
            row, why = from_record(r["Value"])
            key = quarantine_mark_id(r)
            event_id = (row.event_id if row else None) or safe_id("q-", key.replace("/", "-"))
            yield Item(f"quarantine {key}", event_id, row, why, mark=key)

    def mark(self, items: Iterable[Item]) -> None:
        now = datetime.now(UTC)
        marks = [
            UpdateOne({"_id": i.mark}, {"$setOnInsert": {"ReplayedAt": now, "ReplayedAs": i.event_id}}, upsert=True)
            for i in items
        ]
        if marks:
            self.marks.bulk_write(marks, ordered=False)

    def close(self) -> None:
        self.client.close()
