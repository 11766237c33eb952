"""The rejects: the drain's dead letters (MongoDB) and the streaming job's quarantine (Parquet
in the lake), grouped by reason, with the marks the replay leaves, and found by EventId.

A dead letter replayed carries `ReplayedAt` and `ReplayedAs` (the EventId it was sent as); a
quarantined record replayed has a document in `quarantine_replays`, `_id`
"<topic>/<partition>/<offset>" (`shopstream_replay` writes both). The quarantine is small
(only records that broke the contract), so its committed files are read once each and kept.
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
from minio import Minio
from pymongo.collection import Collection

from shopstream.adapters.lake import LakeFiles
from shopstream.adapters.mongo import quarantine_mark_id
from shopstream.settings import Settings

from .browse import decoded, plain, text_of

QUARANTINE_COLUMNS = ["Reason", "Key", "Value", "KafkaTopic", "KafkaPartition", "KafkaOffset", "KafkaTimestamp"]
GROUPS_SHOWN = 30  # reasons shown, the most frequent first (the rest are counted)
SAMPLES = 3  # records shown per reason
DEAD_LETTERS_SCANNED = 200_000  # the EventId search reads at most this many dead letters


def dead_letter_json(d: dict[str, Any]) -> dict[str, Any]:
    value, raw = decoded(d.get("Value"))
    return {
        "id": str(d["_id"]),
        "reason": d.get("Reason"),
        "topic": d.get("Topic"),
        "partition": d.get("Partition"),
        "offset": d.get("Offset"),
        "at": d.get("At"),
        "key": text_of(d.get("Key")),
        "value": value,
        "raw": raw,
        "replayed_at": d.get("ReplayedAt"),
        "replayed_as": d.get("ReplayedAs"),
    }


def quarantine_json(row: dict[str, Any], replay: dict[str, Any] | None) -> dict[str, Any]:
    value, raw = decoded(row.get("Value"))
    return {
        "id": quarantine_mark_id(row),
        "reason": row.get("Reason"),
        "topic": row["KafkaTopic"],
        "partition": row["KafkaPartition"],
        "offset": row["KafkaOffset"],
        "at": row.get("KafkaTimestamp"),
        "key": text_of(row.get("Key")),
        "value": value,
        "raw": raw,
        "replayed_at": (replay or {}).get("ReplayedAt"),
        "replayed_as": (replay or {}).get("ReplayedAs"),
        "replay": plain(replay),  # the replay's whole mark, whatever it holds
    }


def _groups(counts: dict[str, int], replayed: dict[str, int], samples) -> dict[str, Any]:
    ordered = sorted(counts.items(), key=lambda x: (-x[1], x[0]))
    return {
        "total": sum(counts.values()),
        "replayed": sum(replayed.values()),
        "reasons": len(counts),
        "groups": [
            {"reason": r, "count": n, "replayed": replayed.get(r, 0), "samples": samples(r)}
            for r, n in ordered[:GROUPS_SHOWN]
        ],
    }


class DeadLetters:
    def __init__(self, collection: Collection) -> None:
        self.collection = collection

    def grouped(self) -> dict[str, Any]:
        counts = {
            d["_id"]: d["n"] for d in self.collection.aggregate([{"$group": {"_id": "$Reason", "n": {"$sum": 1}}}])
        }
        replayed = {
            d["_id"]: d["n"]
            for d in self.collection.aggregate(
                [{"$match": {"ReplayedAt": {"$exists": True}}}, {"$group": {"_id": "$Reason", "n": {"$sum": 1}}}]
            )
        }

        def samples(reason: str) -> list[dict[str, Any]]:
            return [dead_letter_json(d) for d in self.collection.find({"Reason": reason}).sort("_id", 1).limit(SAMPLES)]

        return _groups(counts, replayed, samples)

    def find(self, event_id: str) -> list[dict[str, Any]]:
        """Dead letters whose raw value holds the EventId, or that were replayed as it."""
        wanted = event_id.encode()
        ids = [
            d["_id"]
            for d in self.collection.find({}, {"Value": 1, "ReplayedAs": 1}).limit(DEAD_LETTERS_SCANNED)
            if d.get("ReplayedAs") == event_id or wanted in bytes(d.get("Value") or b"")
        ]
        return [dead_letter_json(d) for d in self.collection.find({"_id": {"$in": ids}})] if ids else []


class Quarantine:
    """The quarantine's committed rows, read file by file as the job commits them."""

    def __init__(self, s3: Minio, settings: Settings, replays: Collection) -> None:
        self.files = LakeFiles(s3, settings, settings.streaming.quarantine_path)
        self.replays = replays
        self._tables: dict[str, pa.Table | None] = {}
        self._lock = threading.Lock()

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            committed = self.files.committed()
            for key in set(self._tables) - committed:
                del self._tables[key]
            for key in sorted(committed - set(self._tables)):  # each file once: they are few and small
                self._tables[key] = self.files.read([key], columns=QUARANTINE_COLUMNS)
            tables = list(self._tables.values())
        return [r for t in tables if t is not None for r in t.to_pylist()]

    def _replays(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        ids = [quarantine_mark_id(r) for r in rows]
        if not ids:
            return {}
        return {d["_id"]: d for d in self.replays.find({"_id": {"$in": ids}})}

    def grouped(self) -> dict[str, Any]:
        rows = self.rows()
        replays = self._replays(rows)
        counts: dict[str, int] = {}
        replayed: dict[str, int] = {}
        by_reason: dict[str, list[dict[str, Any]]] = {}
        for r in sorted(rows, key=lambda r: (r["KafkaTopic"], r["KafkaPartition"], r["KafkaOffset"])):
            reason = r.get("Reason") or ""
            counts[reason] = counts.get(reason, 0) + 1
            if quarantine_mark_id(r) in replays:
                replayed[reason] = replayed.get(reason, 0) + 1
            if len(by_reason.setdefault(reason, [])) < SAMPLES:
                by_reason[reason].append(r)

        def samples(reason: str) -> list[dict[str, Any]]:
            return [quarantine_json(r, replays.get(quarantine_mark_id(r))) for r in by_reason[reason]]

        return _groups(counts, replayed, samples)

    def find(self, event_id: str) -> list[dict[str, Any]]:
        """Quarantined records whose raw value holds the EventId."""
        wanted = event_id.encode()
        found = [r for r in self.rows() if wanted in (r.get("Value") or b"")]
        replays = self._replays(found)
        return [quarantine_json(r, replays.get(quarantine_mark_id(r))) for r in found]
