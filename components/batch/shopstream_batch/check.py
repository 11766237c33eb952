"""Does MongoDB agree with Kafka? Recount the topic independently and compare.

Reads UserEvents from the beginning up to the batch group's committed offsets
(what the DAG has taken so far), keeps the distinct valid records, counts them per
(UserId, EventName) and compares with the counts collection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from kafka import TopicPartition

from shopstream.adapters.kafka import kafka_consumer
from shopstream.adapters.mongo import collections, database, mongo_client
from shopstream.contracts import UserEventRecord
from shopstream.settings import Settings

from .batches import not_counted


@dataclass
class CountCheck:
    records_read: int = 0
    distinct_events: int = 0
    invalid: int = 0
    stored_events: int = 0
    counted_events: int = 0  # sum of EventCount
    pairs: int = 0
    uncounted: int = 0  # stored, waiting for the next aggregation
    lag: int = 0  # waiting in Kafka for the next drain
    mismatches: dict[str, tuple[int, int]] = field(default_factory=dict)  # pair -> (expected, got)

    @property
    def ok(self) -> bool:
        return not self.mismatches and self.stored_events == self.distinct_events


def check_counts(settings: Settings) -> CountCheck:
    topic, group = settings.kafka.user_events_topic, settings.batch.consumer_group
    consumer = kafka_consumer(settings.kafka, enable_auto_commit=False, group_id=None, consumer_timeout_ms=5000)
    meta = kafka_consumer(settings.kafka, group_id=group, enable_auto_commit=False)
    result = CountCheck()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        upto = {tp: meta.committed(tp) or 0 for tp in tps}
        ends = consumer.end_offsets(tps)
        result.lag = sum(ends[tp] - upto[tp] for tp in tps)
        consumer.assign(tps)
        consumer.seek_to_beginning()
        pending = {tp for tp in tps if upto[tp] > 0}
        latest: dict[str, tuple[str, str]] = {}
        while pending:
            batch = consumer.poll(timeout_ms=2000)
            if not batch:
                break
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= upto[tp]:
                        pending.discard(tp)
                        break
                    result.records_read += 1
                    try:
                        rec = UserEventRecord.model_validate_json(r.value or b"")
                    except Exception:  # noqa: BLE001 - as the drain: set aside, never stop
                        result.invalid += 1
                        continue
                    latest[rec.EventId] = (rec.UserId, rec.EventName.value)
                if consumer.position(tp) >= upto[tp]:
                    pending.discard(tp)
    finally:
        consumer.close()
        meta.close()
    expected = Counter(latest.values())
    result.distinct_events = len(latest)
    client = mongo_client(settings.mongo)
    try:
        colls = collections(database(client, settings.mongo), settings.batch)
        result.stored_events = colls.events.count_documents({})
        result.uncounted = not_counted(colls)
        got = {(d["UserId"], d["EventName"]): d["EventCount"] for d in colls.counts.find({}, {"Applied": 0})}
    finally:
        client.close()
    result.pairs = len(got)
    result.counted_events = sum(got.values())
    if result.uncounted == 0:
        for pair in set(expected) | set(got):
            if expected.get(pair, 0) != got.get(pair, 0):
                result.mismatches[f"{pair[0]}/{pair[1]}"] = (expected.get(pair, 0), got.get(pair, 0))
    return result
