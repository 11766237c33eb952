"""The batch drain: records/s from Kafka into MongoDB, next to MongoDB's own insert rate.

Needs: the Kafka broker and MongoDB (`isolated_stack(["kafka", "mongo"])`).

The UserEvents topic is filled once with N valid records (pre-serialised `UserEventRecord`
JSON, as the API publishes them). Each repeat drains all N with `drain_user_events` as the
Airflow task runs it (a new consumer group and a new database each time, so every repeat
starts from offset 0 into empty collections, validator and indexes created by the drain itself):
records/s = N / wall time of the call (consumer group join, fetch, parse and validate,
insert, offset commits).

Limit, same run: raw `insert_many(ordered=False)` of the same documents (exactly what the
drain builds, `event_document`) into a fresh collection with the same validator and indexes,
in batches of the drain's batch size; only the inserts are timed.
"""

from __future__ import annotations

import statistics
import time
import uuid

from rich.console import Console

from shopstream.adapters.mongo import mongo_client
from shopstream.contracts import UserEventRecord
from shopstream.settings import Settings
from shopstream_batch.drain import drain_user_events
from shopstream_batch.store import ensure_collections, event_document

from .api import event_records
from .harness import Figure, produce

SERVERS = ["kafka", "mongo"]
console = Console()


def run(settings: Settings, quick: bool = False, records: int | None = None, repeats: int | None = None) -> list[Figure]:
    n = records or (10_000 if quick else 100_000)
    repeats = repeats or (2 if quick else 3)
    topic = settings.kafka.user_events_topic
    console.print(f"[bold]drain[/bold]: {n:,} records from {topic} into MongoDB, x {repeats}")
    records_ = event_records(n, f"drain{uuid.uuid4().hex[:6]}")
    produce(settings, topic, records_, f"filling {topic} with {n:,} events")

    # the documents the drain would build for them (partition/offset are not known here; any do)
    docs = [event_document(UserEventRecord.model_validate_json(v), 0, i) for i, (_k, v) in enumerate(records_)]
    client = mongo_client(settings.mongo)
    batch = settings.batch.batch_size
    drain_s, insert_s, problems = [], [], []
    try:
        for i in range(repeats):
            tag = uuid.uuid4().hex[:8]
            cfg = settings.model_copy(update={
                "mongo": settings.mongo.model_copy(update={"database": f"bench_drain_{tag}"}),
                "batch": settings.batch.model_copy(update={"consumer_group": f"bench-drain-{tag}",
                                                           "max_seconds": 3600.0})})
            t0 = time.perf_counter()
            report = drain_user_events(cfg)
            drain_s.append(time.perf_counter() - t0)
            if report.stored != n or report.remaining or report.dead_lettered:
                problems.append(f"run {i + 1}: stored {report.stored:,} of {n:,} (remaining {report.remaining}, "
                                f"dead-lettered {report.dead_lettered})")
            client.drop_database(cfg.mongo.database)

            db = client[f"bench_insert_{tag}"]
            colls = ensure_collections(db, settings.batch)
            t0 = time.perf_counter()
            for start in range(0, n, batch):
                colls.events.insert_many([dict(d) for d in docs[start:start + batch]], ordered=False)
            insert_s.append(time.perf_counter() - t0)
            stored = colls.events.estimated_document_count()
            if stored != n:
                problems.append(f"run {i + 1}: insert_many stored {stored:,} of {n:,}")
            client.drop_database(db.name)
            console.print(f"  run {i + 1}/{repeats}: drain {n / drain_s[-1]:,.0f} records/s ({drain_s[-1]:.1f} s, "
                          f"{report.batches} batches), insert_many {n / insert_s[-1]:,.0f} records/s "
                          f"({insert_s[-1]:.1f} s)")
    finally:
        client.close()
    rate, limit = n / statistics.median(drain_s), n / statistics.median(insert_s)
    note = (f"{n:,} records, batches of {batch:,}; wall time of drain_user_events including the consumer "
            "group join. " + ("; ".join(problems) if problems else "Every record stored once."))
    return [Figure(f"drain UserEvents -> MongoDB ({n:,} records)", rate, "records/s",
                   limit_name="raw insert_many of the same documents", limit_value=limit,
                   target="every record stored once (no speed target)", met=not problems,
                   samples=[n / s for s in drain_s], note=note)]
