"""Task 1: drain `UserEvents` into MongoDB with kafka-python, as a consumer group.

Takes what is waiting when the run starts (the partitions' end offsets at that
moment), in batches: parse and validate, insert, and only then commit the batch's
offsets. A crash between insert and commit means a redelivery, which the unique
event id turns into a counted duplicate. Bad records go to a dead-letter
collection with the reason and their Kafka coordinates; they never stop the run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from shopstream.adapters.mongo import database, mongo_client
from shopstream.contracts import UserEventRecord
from shopstream.settings import Settings, get_settings

from .store import Collections, ensure_collections, event_document, insert_new

log = logging.getLogger(__name__)


@dataclass
class DrainReport:
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    remaining: int = 0  # records waiting at the start that were left for the next run
    seconds: float = 0.0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> next offset committed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Message:
    """What the drain needs of a Kafka record (kafka-python's ConsumerRecord has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def why_invalid(e: Exception) -> str:
    """A dead letter's reason: Pydantic's field paths and messages, or the unexpected error."""
    if not isinstance(e, ValidationError):
        return f"unreadable: {type(e).__name__}: {e}"
    first = e.errors()[0]
    if first["type"] == "json_invalid":
        return "invalid JSON: " + first["msg"]
    return "breaks the contract: " + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())


def split(messages: list[Message]) -> tuple[list[dict], list[dict]]:
    """Parse and validate: (event documents, dead letters). Pure; no I/O."""
    docs, dead = [], []
    for m in messages:
        try:
            record = UserEventRecord.model_validate_json(m.value or b"")
        except Exception as e:  # noqa: BLE001 - one record, whatever is wrong with it, never stops the drain
            dead.append({
                "_id": f"{m.topic}:{m.partition}:{m.offset}",
                "Topic": m.topic, "Partition": m.partition, "Offset": m.offset,
                "Key": m.key, "Value": m.value, "Reason": why_invalid(e), "At": datetime.now(UTC),
            })
            continue
        docs.append(event_document(record, m.partition, m.offset))
    return docs, dead


def store(colls: Collections, messages: list[Message], report: DrainReport) -> None:
    """Insert one batch (events, then dead letters); idempotent, so a redelivered batch is harmless."""
    docs, dead = split(messages)
    stored, dups = insert_new(colls.events, docs)
    dl_new, _ = insert_new(colls.dead_letters, dead)
    report.stored += stored
    report.duplicates += dups
    report.dead_lettered += dl_new
    report.batches += 1


def _consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=settings.batch.consumer_group,
        client_id="shopstream-batch",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch.batch_size,
    )


def _wait_for_assignment(consumer: KafkaConsumer, deadline: float) -> set[TopicPartition]:
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
    return set(consumer.assignment())


def drain_user_events(settings: Settings | None = None) -> DrainReport:
    """Drain what waits in UserEvents now into MongoDB; bounded by `batch.max_seconds`."""
    settings = settings or get_settings()
    cfg = settings.batch
    t0 = time.monotonic()
    deadline = t0 + cfg.max_seconds
    client = mongo_client(settings.mongo)
    colls = ensure_collections(database(client, settings.mongo), cfg)
    consumer = _consumer(settings)
    report = DrainReport()
    try:
        consumer.subscribe([settings.kafka.user_events_topic])
        assigned = _wait_for_assignment(consumer, deadline)
        targets = {tp: end for tp, end in consumer.end_offsets(list(assigned)).items()}
        for tp in assigned:  # rewind whatever the assignment poll fetched but we did not store
            committed = consumer.committed(tp)
            consumer.seek(tp, committed if committed is not None else consumer.beginning_offsets([tp])[tp])
        log.info("draining up to %s", {tp.partition: end for tp, end in targets.items()})
        while time.monotonic() < deadline:
            pending = [tp for tp, end in targets.items() if consumer.position(tp) < end]
            if not pending:
                break
            polled = consumer.poll(timeout_ms=1000, max_records=cfg.batch_size)
            batch: list[Message] = []
            next_offsets: dict[TopicPartition, int] = {}
            for tp, records in polled.items():
                for r in records:
                    if r.offset < targets.get(tp, 0):
                        batch.append(Message(r.topic, r.partition, r.offset, r.key, r.value))
                        next_offsets[tp] = r.offset + 1
            if not batch:
                continue
            store(colls, batch, report)
            # MongoDB has the batch: now, and only now, commit past it
            try:
                consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()})
            except CommitFailedError as e:  # a rebalance took the partitions; they will be redelivered
                log.warning("offset commit failed after storing the batch (it will be seen again): %s", e)
                break
            for tp, off in next_offsets.items():
                report.partitions[tp.partition] = off
                if consumer.position(tp) > off:  # records past the target were fetched: read them next run
                    consumer.seek(tp, off)
            log.info("batch %d: %d records, stored %d, duplicates %d, dead-lettered %d so far",
                     report.batches, len(batch), report.stored, report.duplicates, report.dead_lettered)
        report.remaining = sum(max(0, end - consumer.position(tp)) for tp, end in targets.items())
    finally:
        consumer.close(autocommit=False)
        client.close()
    report.seconds = round(time.monotonic() - t0, 3)
    log.info("drain done: %s", report.as_dict())
    return report
