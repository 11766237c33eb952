"""Kafka clients (kafka-python), idempotent topic creation, and the broker's health check.

Every kafka-python client of the code base is built here (the API's librdkafka clients in
`kafka_rd`). Callers pass what is theirs to choose, a client_id, timeouts, a group,
as keyword arguments; where the broker is comes from the settings (or, in a Spark Python
worker, which gets options rather than settings, from the bootstrap string they carry).
"""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import OffsetOutOfRangeError, TopicAlreadyExistsError

from shopstream.marks import Fingerprint, fingerprint
from shopstream.settings import KafkaSettings, bootstrap_servers


def admin_client(
    cfg: KafkaSettings, timeout_ms: int = 5000, client_id: str = "shopstream-admin", **options
) -> KafkaAdminClient:
    """`options` go to KafkaAdminClient."""
    return KafkaAdminClient(
        bootstrap_servers=cfg.bootstrap_servers, client_id=client_id, request_timeout_ms=timeout_ms, **options
    )


def kafka_consumer(where: KafkaSettings | str, *topics: str, **options) -> KafkaConsumer:
    """A consumer of the settings' broker (or of a bootstrap string); `options` go to KafkaConsumer."""
    return KafkaConsumer(*topics, bootstrap_servers=bootstrap_servers(where), **options)


def kafka_producer(where: KafkaSettings | str, **options) -> KafkaProducer:
    """A producer to the settings' broker (or to a bootstrap string); `options` go to KafkaProducer."""
    return KafkaProducer(bootstrap_servers=bootstrap_servers(where), **options)


def kafka_health(admin: KafkaAdminClient) -> str:
    """The broker answers a metadata request (raises when it does not): `invoke status` and the dashboard."""
    return f"{len(admin.list_topics())} topics"


COMPACTED = {"cleanup.policy": "compact"}  # the dimension topics: the latest record of each key stays


def ensure_topics(cfg: KafkaSettings) -> dict[str, int]:
    """Create the pipeline's topics if missing, the event topics and the compacted dimension
    topics; return each topic's partition count.

    An existing topic is left as it is (its partition count may differ from the
    setting; we report it rather than silently changing it).
    """
    admin = admin_client(cfg)
    wanted: dict[str, dict[str, str]] = {t: {} for t in cfg.topics} | {t: COMPACTED for t in cfg.dimension_topics}
    try:
        existing = set(admin.list_topics())
        for topic, configs in wanted.items():
            if topic in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):  # created concurrently by another caller
                admin.create_topics(
                    [NewTopic(topic, cfg.partitions, cfg.replication_factor, topic_configs=configs)],
                    validate_only=False,
                )
        described = admin.describe_topics(list(wanted))
        return {d["name"]: len(d["partitions"]) for d in described}
    finally:
        admin.close()


def end_offsets(cfg: KafkaSettings, topic: str) -> dict[int, int]:
    """Each partition's next offset (where a new record would land); their sum is how many
    records the topic has received."""
    consumer = kafka_consumer(cfg, client_id="shopstream-offsets")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()
    return {tp.partition: offset for tp, offset in sorted(ends.items())}


def group_committed(cfg: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    """A consumer group's next offset committed per partition (0: nothing yet), read without joining it."""
    consumer = kafka_consumer(cfg, group_id=group, client_id="shopstream-offsets", enable_auto_commit=False)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in partitions}
    finally:
        consumer.close(autocommit=False)


def record_fingerprints(
    bootstrap_servers: str, wanted: dict[TopicPartition, int], client_id: str, timeout_s: float = 15.0
) -> dict[TopicPartition, Fingerprint | None]:
    """The fingerprint (shopstream.marks) of the record at the given offset of each partition,
    None where no record is at that offset; one fetch for all of them. Raises TimeoutError
    when the broker does not answer.

    A consumer of its own each time (about 10 ms): a reused one, sought back and forth and
    paused, kept fetched data that hid the next answers (kafka-python 3 on noida-db)."""
    got: dict[TopicPartition, Fingerprint | None] = {}
    if not wanted:
        return got
    consumer = kafka_consumer(
        bootstrap_servers, client_id=client_id, enable_auto_commit=False, auto_offset_reset="none", max_poll_records=50
    )
    try:
        consumer.assign(list(wanted))
        for tp, offset in wanted.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while len(got) < len(wanted):
            if time.monotonic() > deadline:
                missing = sorted(f"{tp.topic}-{tp.partition}@{wanted[tp]}" for tp in wanted if tp not in got)
                raise TimeoutError(f"no answer for the records at {', '.join(missing)} in {timeout_s:.0f} s")
            try:
                polled = consumer.poll(timeout_ms=200)
            except OffsetOutOfRangeError as e:  # truncated since the caller read the bounds: not there
                gone = e.args[0] if e.args and isinstance(e.args[0], dict) else wanted
                for tp in gone:
                    got.setdefault(tp, None)
                    consumer.pause(tp)
                continue
            for tp, records in polled.items():
                if tp not in got and records:
                    first = records[0]
                    got[tp] = fingerprint(first.value, first.timestamp) if first.offset == wanted[tp] else None
                    consumer.pause(tp)  # one record each is all we want
    finally:
        consumer.close()
    return got


# -- browsing (the dashboard's topic browser): bounds, groups, records by offset ---------------
def partition_bounds(consumer: KafkaConsumer, topics: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
    """Each topic's partitions with their (first, next) offsets: `next - first` records are
    there now (fewer in a compacted topic)."""
    tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
    if not tps:
        return {t: {} for t in topics}
    begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
    out: dict[str, dict[int, tuple[int, int]]] = {t: {} for t in topics}
    for tp in tps:
        out[tp.topic][tp.partition] = (begins[tp], ends[tp])
    return out


def group_offsets(admin: KafkaAdminClient) -> dict[str, tuple[str, dict[TopicPartition, int]]]:
    """Every consumer group the broker knows: its state and its committed next offsets (the
    Spark job keeps its offsets in its checkpoint, not in a group, so it is not among them)."""
    out: dict[str, tuple[str, dict[TopicPartition, int]]] = {}
    for g in sorted(admin.list_groups(), key=lambda g: g["group_id"]):
        group = g["group_id"]
        committed = admin.list_group_offsets({group: None}).get(group, {})
        out[group] = (g.get("group_state") or "", {tp: om.offset for tp, om in committed.items() if om.offset >= 0})
    return out


def read_ranges(
    where: KafkaSettings | str,
    ranges: dict[TopicPartition, tuple[int, int]],
    timeout_s: float = 10.0,
    client_id: str = "shopstream-browse",
    **options,
) -> dict[TopicPartition, list]:
    """The records with `start <= offset < stop` of each partition (kafka-python's
    ConsumerRecords, in offset order), by one consumer of its own that joins no group.
    Raises TimeoutError when they have not all come within `timeout_s`."""
    got: dict[TopicPartition, list] = {tp: [] for tp in ranges}
    todo = {tp: r for tp, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return got
    consumer = kafka_consumer(
        where, client_id=client_id, enable_auto_commit=False, auto_offset_reset="earliest", **options
    )
    try:
        consumer.assign(list(todo))
        for tp, (start, _) in todo.items():
            consumer.seek(tp, start)
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                left = ", ".join(sorted(f"{tp.topic}-{tp.partition}" for tp in todo))
                raise TimeoutError(f"the records of {left} did not come in {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=200).items():
                got[tp] += [r for r in records if r.offset < ranges[tp][1]]
            for tp in [tp for tp in todo if consumer.position(tp) >= todo[tp][1]]:
                consumer.pause(tp)  # read to its stop (a compacted topic's gaps are skipped)
                del todo[tp]
    finally:
        consumer.close()
    return got
