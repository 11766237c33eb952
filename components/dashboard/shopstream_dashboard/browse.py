"""The topic browser's Kafka side: every topic with its partitions, offsets and the consumer
groups' lag; a partition's latest records and the record at an offset, as JSON.

Offsets and groups are asked on the app's shared Kafka clients (`deps.KafkaClients`, under
their lock, waited for no longer than a few probe timeouts); records are read by a consumer
of their own that joins no group (`shopstream.adapters.kafka.read_ranges`). Every call has a
timeout, so a broker that is down answers as down instead of holding up the page. The calls
block: the routes run them in FastAPI's threadpool, never on the event loop.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from kafka import TopicPartition

from shopstream.adapters.kafka import group_offsets, partition_bounds, read_ranges
from shopstream.settings import Settings
from shopstream.streaming_status import purchases_read, read_status, status_path

from .deps import Clients

LATEST_MAX = 200  # records of a partition the page may ask for at once
STREAMING_GROUP = "streaming job (Spark checkpoint)"  # as the health card names it


class KafkaDown(RuntimeError):
    """The broker did not answer (or the clients were busy for too long): shown as down."""


def decoded(raw: bytes | None) -> tuple[Any, str | None]:
    """A record's bytes as (parsed JSON, None), or (None, the text) when they are not JSON."""
    if raw is None:
        return None, None
    try:
        return json.loads(raw), None
    except ValueError:
        return None, raw.decode("utf-8", "replace")


def plain(value: Any) -> Any:
    """A MongoDB document's values as JSON can hold them (Decimal128 as its exact text, bytes as text)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, Decimal128):
        return str(value.to_decimal())
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, ObjectId):
        return str(value)
    return value


def text_of(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def record_json(r: Any) -> dict[str, Any]:
    """A Kafka record (kafka-python's ConsumerRecord) as the page shows it."""
    value, raw = decoded(r.value)
    return {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": datetime.fromtimestamp(r.timestamp / 1000, UTC)
        if r.timestamp is not None and r.timestamp >= 0
        else None,
        "key": text_of(r.key),
        "headers": {k: text_of(v) for k, v in (r.headers or [])},
        "value": value,
        "raw": raw,
    }


class TopicBrowser:
    """Reads the broker for the page; every method raises KafkaDown when it does not answer."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings, self.clients = settings, clients
        self.read_timeout_s = max(10.0, clients.timeout_s * 4)

    def _with_kafka(self, use):
        kafka = self.clients.kafka
        if not kafka.lock.acquire(timeout=self.clients.timeout_s * 3):
            raise KafkaDown("the Kafka clients are busy: the broker is slow to answer")
        try:
            return use(*kafka.get())
        except Exception as e:
            kafka.drop()
            raise KafkaDown(f"{type(e).__name__}: {e}") from e
        finally:
            kafka.lock.release()

    def roles(self) -> dict[str, str]:
        k = self.settings.kafka
        return {
            k.user_events_topic: "user events (the API -> the batch's drain)",
            k.purchases_topic: "purchases (the API -> the streaming job)",
            k.products_topic: "products (compacted dimension data)",
            k.customers_topic: "customers (compacted dimension data)",
        }

    def bounds(self, topics: list[str]) -> dict[str, dict[int, tuple[int, int]]]:
        return self._with_kafka(lambda _, consumer: partition_bounds(consumer, topics))

    def overview(self) -> list[dict[str, Any]]:
        """Every topic but the broker's own (`__...`), the pipeline's first: partitions with
        their first and next offsets, and each consumer group's committed offsets and lag."""

        def read(admin, consumer):
            names = [t for t in admin.list_topics() if not t.startswith("__")]
            return partition_bounds(consumer, names), group_offsets(admin)

        bounds, groups = self._with_kafka(read)
        roles = self.roles()
        streamed = purchases_read(read_status(status_path(self.settings)), self.settings.kafka.purchases_topic)
        out = []
        for topic in sorted(bounds, key=lambda t: (t not in roles, list(roles).index(t) if t in roles else 0, t)):
            parts = bounds[topic]
            end = sum(e for _, e in parts.values())
            rows = [{"partition": p, "first": b, "next": e, "records": e - b} for p, (b, e) in sorted(parts.items())]
            lagging = []
            for group, (state, committed) in groups.items():
                mine = {tp.partition: o for tp, o in committed.items() if tp.topic == topic}
                if not mine:
                    continue
                per = [
                    {"partition": p, "committed": mine.get(p), "lag": max(0, e - mine.get(p, b))}
                    for p, (b, e) in sorted(parts.items())
                ]
                lagging.append({"group": group, "state": state, "lag": sum(x["lag"] for x in per), "partitions": per})
            if topic == self.settings.kafka.purchases_topic and streamed is not None:
                lagging.append({"group": STREAMING_GROUP, "state": "", "lag": max(0, end - streamed), "partitions": []})
            out.append(
                {
                    "topic": topic,
                    "role": roles.get(topic),
                    "records": sum(r["records"] for r in rows),
                    "end": end,
                    "partitions": rows,
                    "groups": lagging,
                }
            )
        return out

    def _partition(self, topic: str, partition: int) -> tuple[int, int]:
        parts = self.bounds([topic]).get(topic) or {}
        if partition not in parts:
            raise LookupError(f"no partition {partition} in topic {topic!r}")
        return parts[partition]

    def latest(self, topic: str, partition: int, n: int) -> dict[str, Any]:
        """The partition's last `n` records, newest first."""
        first, end = self._partition(topic, partition)
        start = max(first, end - n)
        tp = TopicPartition(topic, partition)
        records = self._read({tp: (start, end)})[tp]
        return {
            "topic": topic,
            "partition": partition,
            "first": first,
            "next": end,
            "records": [record_json(r) for r in reversed(records)],
        }

    def at(self, topic: str, partition: int, offset: int) -> dict[str, Any]:
        """The record at `offset`; LookupError when there is none (out of the partition's range,
        or removed by compaction)."""
        first, end = self._partition(topic, partition)
        if not first <= offset < end:
            raise LookupError(f"{topic}-{partition} holds offsets {first} to {end - 1}, not {offset}")
        tp = TopicPartition(topic, partition)
        found = [r for r in self._read({tp: (offset, offset + 1)})[tp] if r.offset == offset]
        if not found:
            raise LookupError(f"no record at {topic}-{partition}@{offset} (compacted away)")
        return record_json(found[0])

    def scan(self, topics: list[str], per_partition: int) -> list[Any]:
        """The latest `per_partition` records of every partition of the topics."""
        bounds = self.bounds(topics)
        ranges = {
            TopicPartition(t, p): (max(b, e - per_partition), e)
            for t, parts in bounds.items()
            for p, (b, e) in parts.items()
        }
        return [r for records in self._read(ranges).values() for r in records]

    def _read(self, ranges: dict[TopicPartition, tuple[int, int]]) -> dict[TopicPartition, list]:
        ms = int(self.clients.timeout_s * 1000)
        try:
            return read_ranges(
                self.settings.kafka,
                ranges,
                timeout_s=self.read_timeout_s,
                client_id="shopstream-dashboard-browse",
                request_timeout_ms=max(ms, 1000),
                bootstrap_timeout_ms=max(ms, 1000),
            )
        except Exception as e:
            raise KafkaDown(f"{type(e).__name__}: {e}") from e
