"""What the audit reads from each store, through shopstream's adapters.

Every reader takes a snapshot of one store. `report.collect` calls them in an order that
keeps the snapshots consistent while the pipeline runs: the ledger first (every record it
holds is in Kafka by then), then the stages' committed positions, then Kafka's end
offsets, then the stores (a stage writes before it commits, so whatever lies below the
committed position read earlier is in the store by the time it is read).
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pyarrow.parquet as pq
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import OffsetOutOfRangeError

from shopstream import ledger
from shopstream.adapters.kafka import group_committed as committed_offsets
from shopstream.adapters.kafka import kafka_consumer
from shopstream.adapters.lake import LakeFiles
from shopstream.adapters.mongo import collections, database, mongo_client
from shopstream.adapters.s3 import read_object, s3_client
from shopstream.settings import Settings

from .reconcile import Copies, CountDoc, Pair, Pos

Progress = Callable[[int], None]  # called with how many more units are done


def _nothing(_n: int) -> None:
    pass


class AuditError(RuntimeError):
    """A store the audit cannot do without (the ledger, Kafka) could not be read."""


def event_id_of(value: bytes | str | None) -> str | None:
    """The EventId in a record's JSON value; None when it is not JSON or has none."""
    if value is None:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    event_id = doc.get("EventId") if isinstance(doc, dict) else None
    return event_id if isinstance(event_id, str) and event_id else None


# -- the ledger -------------------------------------------------------------------------------
@dataclass
class Ledger:
    acked: dict[str, dict[str, Pos]]  # topic -> EventId -> where its first ledger line put it
    lines: int = 0
    again: dict[str, int] = field(default_factory=dict)  # topic -> EventIds with 2+ lines (published again)
    other_topics: dict[str, int] = field(default_factory=dict)  # lines of topics these settings do not name
    oldest_hour: datetime | None = None
    folder: Path | None = None


def read_ledger(settings: Settings) -> Ledger:
    """Every acknowledged record of the pipeline's topics, once per (topic, EventId)."""
    topics = settings.kafka.topics
    out = Ledger(
        acked={t: {} for t in topics}, oldest_hour=ledger.oldest_hour(settings), folder=ledger.ledger_dir(settings)
    )
    again: Counter[str] = Counter()
    other: Counter[str] = Counter()
    for line in ledger.acknowledged(settings):
        out.lines += 1
        known = out.acked.get(line.topic)
        if known is None:
            other[line.topic] += 1
        elif line.event_id in known:
            again[line.topic] += 1
        else:
            known[line.event_id] = (line.partition, line.offset)
    out.again, out.other_topics = dict(again), dict(other)
    return out


# -- Kafka ------------------------------------------------------------------------------------
def _consumer(settings: Settings, **kwargs) -> KafkaConsumer:
    return kafka_consumer(settings.kafka, client_id="shopstream-audit", enable_auto_commit=False, **kwargs)


@dataclass
class TopicBounds:
    beginning: dict[str, dict[int, int]]  # topic -> partition -> first offset still held
    end: dict[str, dict[int, int]]  # topic -> partition -> next offset


def topic_bounds(settings: Settings) -> TopicBounds:
    consumer = _consumer(settings)
    try:
        bounds = TopicBounds({}, {})
        for topic in settings.kafka.topics:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            lows, highs = (consumer.beginning_offsets(tps), consumer.end_offsets(tps)) if tps else ({}, {})
            bounds.beginning[topic] = {tp.partition: o for tp, o in lows.items()}
            bounds.end[topic] = {tp.partition: o for tp, o in highs.items()}
        return bounds
    finally:
        consumer.close()


def group_committed(settings: Settings, topic: str) -> dict[int, int]:
    """The batch's consumer group: next offset committed per partition (0: nothing yet)."""
    return committed_offsets(settings.kafka, settings.batch.consumer_group, topic)


def scan_topics(
    settings: Settings,
    acked: Mapping[str, Container[str]],
    bounds: TopicBounds,
    progress: Progress = _nothing,
    stall_s: float = 60.0,
) -> dict[str, Copies]:
    """Read every topic from its beginning to the end offsets in `bounds`; where each
    acknowledged EventId has its copies."""
    copies = {topic: Copies() for topic in bounds.end}
    targets = {
        TopicPartition(t, p): end
        for t, parts in bounds.end.items()
        for p, end in parts.items()
        if end > bounds.beginning[t].get(p, 0)
    }
    if not targets:
        return copies
    # no reset: an offset out of range means the topic changed under the scan (a broker that lost
    # its tail, records deleted by retention); skipping or re-reading would both count wrongly
    consumer = _consumer(settings, group_id=None, max_poll_records=10_000, auto_offset_reset="none")
    try:
        consumer.assign(list(targets))
        for tp in targets:
            consumer.seek(tp, bounds.beginning[tp.topic].get(tp.partition, 0))
        left, last = set(targets), time.monotonic()
        while left:
            try:
                polled = consumer.poll(timeout_ms=1000)
            except OffsetOutOfRangeError as e:
                raise AuditError(f"Kafka's records changed during the audit ({e}); run it again") from e
            read = 0
            for tp, records in polled.items():
                stop, seen, known = targets[tp], copies[tp.topic], acked[tp.topic]
                for r in records:
                    if r.offset >= stop:
                        break
                    read += 1
                    seen.records += 1
                    event_id = event_id_of(r.value)
                    if event_id is None:
                        seen.unreadable += 1
                    elif event_id in known:
                        seen.add(event_id, r.partition, r.offset)
                    else:
                        seen.unacknowledged += 1
            for tp in list(left):
                if consumer.position(tp) >= targets[tp]:
                    left.discard(tp)
                    consumer.pause(tp)
            if read:
                progress(read)
                last = time.monotonic()
            elif time.monotonic() - last > stall_s:
                where = ", ".join(
                    f"{tp.topic}-{tp.partition} at {consumer.position(tp)} of {targets[tp]}" for tp in sorted(left)
                )
                raise AuditError(f"Kafka returned no records for {stall_s:.0f} s ({where})")
    finally:
        consumer.close(autocommit=False)
    return copies


# -- MongoDB ----------------------------------------------------------------------------------
@dataclass
class MongoSnapshot:
    in_events: set[str] = field(default_factory=set)  # acknowledged EventIds stored as events
    in_dead_letters: set[str] = field(default_factory=set)  # ... and those among the dead letters
    events: int = 0
    dead_letters: int = 0
    applied_batches: set[str] = field(default_factory=set)
    counts: dict[Pair, CountDoc] = field(default_factory=dict)
    stored: dict[Pair, dict[str | None, int]] = field(default_factory=dict)  # pair -> AggBatch -> events


def read_mongo(
    settings: Settings, acked: Container[str], progress: Progress = _nothing, total: Callable[[int], None] = _nothing
) -> MongoSnapshot:
    """Stored events, dead letters and counts. Read in this order so a running aggregation
    cannot make them disagree: applied batches, then counts (each with the batches merged
    into it), then events (a batch's events are fixed before it is merged)."""
    client = mongo_client(settings.mongo)
    try:
        colls = collections(database(client, settings.mongo), settings.batch)
        snap = MongoSnapshot()
        snap.applied_batches = {d["_id"] for d in colls.agg_batches.find({"state": "applied"}, {"_id": 1})}
        for d in colls.counts.find({}, {"UserId": 1, "EventName": 1, "EventCount": 1, "Applied": 1}):
            snap.counts[(d["UserId"], d["EventName"])] = CountDoc(
                int(d.get("EventCount") or 0), frozenset(d.get("Applied") or ())
            )
        total(colls.events.estimated_document_count() + colls.dead_letters.estimated_document_count())
        stored: dict[Pair, Counter] = defaultdict(Counter)
        cursor = colls.events.find({}, {"UserId": 1, "EventName": 1, "AggBatch": 1}, batch_size=10_000)
        for n, d in enumerate(cursor, 1):
            if d["_id"] in acked:
                snap.in_events.add(d["_id"])
            stored[(d.get("UserId"), d.get("EventName"))][d.get("AggBatch")] += 1
            if n % 10_000 == 0:
                progress(10_000)
            snap.events = n
        progress(snap.events % 10_000)
        snap.stored = {pair: dict(c) for pair, c in stored.items()}
        for d in colls.dead_letters.find({"Topic": settings.kafka.user_events_topic}, {"Value": 1}):
            snap.dead_letters += 1
            event_id = event_id_of(d.get("Value"))
            if event_id is not None and event_id in acked:
                snap.in_dead_letters.add(event_id)
            progress(1)
        return snap
    finally:
        client.close()


# -- the streaming job's checkpoint -----------------------------------------------------------
@dataclass
class Checkpoint:
    url: str
    batch: int | None = None  # the latest committed batch; None: none yet
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> next offset, committed
    problem: str | None = None  # why it could not be read (then offsets are unknown)


def local_path(url: str) -> Path | None:
    """The local folder of a checkpoint location; None for a Hadoop URI elsewhere (s3a://, hdfs://)."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    if parts.scheme == "" or (len(parts.scheme) == 1 and url[1:3] in (":\\", ":/")):  # a plain path
        return Path(url)
    return None


def source_offsets(text: str, topic: str) -> dict[int, int] | None:
    """A checkpoint offsets file's offsets of `topic`: line 1 "v1", line 2 the batch's
    metadata, then one JSON per source, `{"<topic>": {"<partition>": next offset}}`
    (keys starting with "@" are the source's own bookkeeping, not partitions)."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("v"):
        raise ValueError(f"not a checkpoint offsets file (first line {lines[0][:20] if lines else ''!r})")
    for line in lines[2:]:
        line = line.strip()
        if not line or line == "-":  # a source with no offset yet
            continue
        source = json.loads(line)
        if isinstance(source, dict) and isinstance(source.get(topic), dict):
            return {int(p): int(o) for p, o in source[topic].items() if not str(p).startswith("@")}
    return None


def _numbered(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def read_checkpoint(url: str, topic: str) -> Checkpoint:
    """The offsets of the latest batch the query committed (Spark's `commits/<n>` and `offsets/<n>`)."""
    folder = local_path(url)
    cp = Checkpoint(url)
    if folder is None:
        cp.problem = (
            f"the checkpoint {url} is not on local disk; the audit reads local checkpoints only, "
            "so which purchases are due in the lake is unknown"
        )
        return cp
    offsets = set(_numbered(folder / "offsets"))
    committed = [n for n in _numbered(folder / "commits") if n in offsets]
    if not committed:
        return cp  # no batch committed yet: nothing is due
    cp.batch = committed[-1]
    try:
        found = source_offsets((folder / "offsets" / str(cp.batch)).read_text(), topic)
    except (OSError, ValueError) as e:
        cp.problem = f"cannot read {folder / 'offsets' / str(cp.batch)}: {e}"
        return cp
    if found is None:
        cp.problem = f"{folder / 'offsets' / str(cp.batch)} has no offsets of {topic}"
        return cp
    cp.offsets = found
    return cp


# -- the lake ---------------------------------------------------------------------------------
@dataclass
class LakeSnapshot:
    files: int = 0
    rows: int = 0
    gone: list[str] = field(default_factory=list)  # committed files no longer in S3
    in_lake: set[str] = field(default_factory=set)  # acknowledged EventIds with a row in the lake
    doubled: dict[str, int] = field(default_factory=dict)  # EventId -> rows, for 2+ rows
    quarantine_files: int = 0
    quarantine_rows: int = 0
    in_quarantine: set[str] = field(default_factory=set)  # acknowledged EventIds in quarantine


def _read_column(client, bucket: str, key: str, column: str) -> list | None:
    """One column of a Parquet object; None when the object is gone."""
    if (data := read_object(client, bucket, key)) is None:
        return None
    return pq.read_table(io.BytesIO(data), columns=[column]).column(column).to_pylist()


def _files(client, settings: Settings, path: str) -> list[str]:
    st = settings.streaming.model_copy(update={"output_path": path})
    return sorted(LakeFiles(client, settings.model_copy(update={"streaming": st})).committed())


def lake_files(settings: Settings) -> tuple[list[str], list[str]]:
    """The committed files (as the file sink's log lists them) of the lake and of quarantine."""
    client = s3_client(settings.s3)
    return (
        _files(client, settings, settings.streaming.output_path),
        _files(client, settings, settings.streaming.quarantine_path),
    )


def read_lake(
    settings: Settings,
    acked: Container[str],
    files: list[str],
    quarantine: list[str],
    progress: Progress = _nothing,
    threads: int = 8,
) -> LakeSnapshot:
    """EventIds of every row of the committed files: which acknowledged purchases are there,
    and which EventIds have more than one row; and the acknowledged ones in quarantine."""
    client, bucket = s3_client(settings.s3), settings.s3.bucket
    snap = LakeSnapshot(files=len(files), quarantine_files=len(quarantine))
    seen: set[str] = set()
    with ThreadPoolExecutor(threads) as pool:
        for key, ids in zip(files, pool.map(lambda k: _read_column(client, bucket, k, "EventId"), files), strict=True):
            if ids is None:
                snap.gone.append(key)
            else:
                snap.rows += len(ids)
                for event_id in ids:
                    if event_id in seen:
                        snap.doubled[event_id] = snap.doubled.get(event_id, 1) + 1
                    else:
                        seen.add(event_id)
            progress(1)
        snap.in_lake = {e for e in seen if e in acked}
        del seen
        for key, values in zip(
            quarantine, pool.map(lambda k: _read_column(client, bucket, k, "Value"), quarantine), strict=True
        ):
            if values is None:
                snap.gone.append(key)
            else:
                snap.quarantine_rows += len(values)
                for value in values:
                    event_id = event_id_of(value)
                    if event_id is not None and event_id in acked:
                        snap.in_quarantine.add(event_id)
            progress(1)
    return snap


# -- the API's metrics ------------------------------------------------------------------------
API_METRICS = {
    "shopstream_published_records_total": "records published",
    "shopstream_broker_losses_total": "broker losses",
    "shopstream_journal_republished_records_total": "records published again from the journal",
}


@dataclass
class ApiMetrics:
    url: str
    error: str | None = None  # the API did not answer
    values: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> topic -> value


def api_metrics(settings: Settings, timeout_s: float = 3.0) -> ApiMetrics:
    """The API's counters of published, lost and republished records, if it answers."""
    from prometheus_client.parser import text_string_to_metric_families

    out = ApiMetrics(f"{settings.api.base_url}/metrics")
    try:
        resp = httpx.get(out.url, timeout=timeout_s)
        resp.raise_for_status()
    except httpx.HTTPError as e:
        out.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return out
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name in API_METRICS:
                out.values.setdefault(s.name, {})[s.labels.get("topic", "")] = s.value
    return out
