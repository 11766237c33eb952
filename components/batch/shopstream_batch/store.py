"""The MongoDB side of the batch: its collections' validators and indexes, documents, idempotent inserts.

A stored event's `_id` is its EventId, so a record seen twice (redelivery, a
retried run, a client retry with the same Idempotency-Key, a rewind after the broker
lost records) is stored once. The drain's offset marks and rewinds live here too
(`shopstream.marks`, `shopstream.rewinds`). The collections are named in
`shopstream.adapters.mongo.collections`, where the audit and the dashboard find them too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from pymongo import ASCENDING
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid

from shopstream.adapters.mongo import Collections, collections
from shopstream.contracts import UserEventRecord
from shopstream.contracts.enrichment import Enrichment
from shopstream.contracts.mongo import mongo_validator
from shopstream.enrichment import enrichment_fields
from shopstream.marks import Mark
from shopstream.settings import BatchSettings

DUPLICATE_KEY = 11000
_AGG_BATCH_ALONE = "AggBatch_1"  # the index on AggBatch alone, before (AggBatch, StoredAt) replaced it

STORE_FIELDS: dict[str, dict[str, Any]] = {
    "KafkaPartition": {"bsonType": ["int", "long"]},
    "KafkaOffset": {"bsonType": ["int", "long"]},
    "StoredAt": {"bsonType": "date"},
    "AggBatch": {"bsonType": ["string", "null"]},  # which aggregation batch counted it
    "Enrichment": mongo_validator(Enrichment)["$jsonSchema"],  # from ClientIp and UserAgent
}


def ensure_collections(db: Database, cfg: BatchSettings) -> Collections:
    """Create collections, validators and indexes if missing (idempotent, cheap when present)."""
    validator = mongo_validator(UserEventRecord, rename={"EventId": "_id"}, extra=STORE_FIELDS)
    try:
        db.create_collection(cfg.events_collection, validator=validator)
    except CollectionInvalid:  # exists already
        db.command("collMod", cfg.events_collection, validator=validator)
    c = collections(db, cfg)
    # the aggregation claims the oldest uncounted events by a range of this index, reading only
    # those; it serves every query on AggBatch alone too, so the single-field index it replaces
    # would only cost a second index update at every insert and claim (dropped once, if there)
    c.events.create_index([("AggBatch", ASCENDING), ("StoredAt", ASCENDING)])
    if _AGG_BATCH_ALONE in c.events.index_information():
        c.events.drop_index(_AGG_BATCH_ALONE)
    c.events.create_index([("StoredAt", ASCENDING)])  # readers that follow what was stored since (the dashboard)
    c.counts.create_index([("UserId", ASCENDING), ("EventName", ASCENDING)], unique=True)
    c.agg_batches.create_index([("state", ASCENDING), ("created", ASCENDING)])  # the few not applied, oldest first
    return c


def _mongo_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, dict):
        return {k: _mongo_value(v) for k, v in value.items()}
    return value


def event_document(record: UserEventRecord, partition: int, offset: int, batch: str | None = None) -> dict[str, Any]:
    """The stored form of an event, its envelope enriched; `batch`: the aggregation batch it is
    stored in (None: uncounted)."""
    doc = _mongo_value(record.model_dump(mode="python"))
    doc["_id"] = doc.pop("EventId")
    doc["EventName"] = record.EventName.value
    doc.update(KafkaPartition=partition, KafkaOffset=offset, StoredAt=datetime.now(UTC), AggBatch=batch)
    doc["Enrichment"] = enrichment_fields(record.ClientIp, record.UserAgent)
    return doc


def insert_new(collection, docs: list[dict[str, Any]], validated: bool = False) -> tuple[int, int]:
    """Insert documents whose _id is not stored yet. Returns (inserted, duplicates).

    `validated`: the documents come from records the contract has just validated, so the
    collection's validator (derived from the same contract) is not asked again; on the
    embedded server that second check is about a fifth of an insert's cost."""
    if not docs:
        return 0, 0
    try:
        result = collection.insert_many(docs, ordered=False, bypass_document_validation=validated)
        return len(result.inserted_ids), 0
    except BulkWriteError as e:
        errors = e.details.get("writeErrors", [])
        others = [err for err in errors if err.get("code") != DUPLICATE_KEY]
        if others:
            raise
        return e.details.get("nInserted", len(docs) - len(errors)), len(errors)


def _marks_id(group: str, topic: str, partition: int) -> str:
    return f"{group}|{topic}|{partition}"


def load_marks(colls: Collections, group: str, topic: str) -> dict[int, tuple[Mark, ...]]:
    """partition -> the group's marks on it, oldest first."""
    return {
        int(d["Partition"]): tuple(Mark.from_list(x) for x in d["Marks"])
        for d in colls.marks.find({"Group": group, "Topic": topic})
    }


def save_marks(colls: Collections, group: str, topic: str, partition: int, marks: tuple[Mark, ...]) -> None:
    colls.marks.replace_one(
        {"_id": _marks_id(group, topic, partition)},
        {
            "Group": group,
            "Topic": topic,
            "Partition": partition,
            "Marks": [m.as_list() for m in marks],
            "At": datetime.now(UTC),
        },
        upsert=True,
    )
