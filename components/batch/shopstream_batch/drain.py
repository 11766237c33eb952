"""Task 1: drain `UserEvents` into MongoDB with kafka-python, as a consumer group.

Takes what is waiting when the run starts (the partitions' end offsets at that
moment), in batches: parse and validate, insert, and only then commit the batch's
offsets. A crash between insert and commit means a redelivery, which the unique
event id turns into a counted duplicate. Bad records go to a dead-letter
collection with the reason and their Kafka coordinates; they never stop the run.

Before a batch's commit, the drain stores a mark of each partition's new position (a
fingerprint of the record before it, `shopstream.marks`). A run starts by checking the
committed positions against them: where the broker lost records past a committed offset
(its position is past the end, or the records there were replaced by new ones), the run
reads again from the newest offset still intact, records the rewind
(`shopstream.rewinds`) and logs it, instead of skipping the new records.

A run has a time budget (`BatchSettings.max_seconds`): its first batch is small, and
each next one holds what the rate measured so far says fits in the time left
(`shopstream_batch.budget`), so a slow MongoDB makes batches smaller, not runs longer.
What it leaves is in the report's `remaining`, counted on every partition of the topic:
one the run never got (the group join outlasted the budget, or another member held it)
counts from the group's committed offset, read without joining the group. `done` is
true only when nothing is left for certain.

A run joins the group as a static member (`group.instance.id` shopstream-batch-drain-<member>): a
run that ends, or dies with kill -9, stays a member without leaving, and the next run of
the same member takes its place at once, with its partitions. A dynamic member that
vanishes without a LeaveGroup (killed, or its LeaveGroup stuck behind its own pending
JoinGroup) stays in the group until its session times out, and a broker that never
expires members (the embedded one) would hold every later join back for good. Two runs of
one member at once: the newer fences the older, which stops at its next poll or commit; what
it stored uncommitted comes back to the newer as counted duplicates.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, FencedInstanceIdError, KafkaError
from kafka.structs import OffsetAndMetadata

from shopstream.adapters.kafka import kafka_consumer, record_fingerprints
from shopstream.adapters.mongo import Collections, database, mongo_client
from shopstream.contracts import UserEventRecord, why_invalid
from shopstream.marks import Mark, Verdict, check, remember
from shopstream.rewinds import DRAIN, Rewind, drain_document
from shopstream.settings import Settings, get_settings

from .batches import abandon_left_open, close_batch, open_batch
from .budget import Budget
from .store import ensure_collections, event_document, insert_new, load_marks, save_marks

log = logging.getLogger(__name__)

FIRST_BATCH = 500  # records in a run's first batch, which times the servers for the next ones


@dataclass
class DrainReport:
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    # records waiting when the run started (the end offsets then) that it left for the next
    # run, on every partition of the topic, those it was not assigned included
    remaining: int = 0
    # False when the committed offset of a partition the run was not assigned could not be
    # read: `remaining` then counts only the partitions it could, and `done` is False
    remaining_known: bool = True
    unassigned: list[int] = field(default_factory=list)  # partitions of the topic this run did not read
    rewound: int = 0  # partitions read again from an earlier offset: the broker had lost records past the commit
    seconds: float = 0.0
    partitions: dict[int, int] = field(default_factory=dict)  # partition -> next offset committed

    @property
    def done(self) -> bool:
        """Nothing that waited at the start is left, for certain: "did not get to it" is never done."""
        return self.remaining_known and self.remaining == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": self.done}


@dataclass(frozen=True)
class Message:
    """What the drain needs of a Kafka record (kafka-python's ConsumerRecord has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1  # Kafka's, in ms: part of the offset mark


def split(messages: list[Message], batch: str | None = None) -> tuple[list[dict], list[dict]]:
    """Parse and validate: (event documents in aggregation batch `batch`, dead letters). Pure; no I/O."""
    docs, dead = [], []
    for m in messages:
        try:
            record = UserEventRecord.model_validate_json(m.value or b"")
        except Exception as e:  # noqa: BLE001 - one record, whatever is wrong with it, never stops the drain
            dead.append(
                {  # the crc: a new record at an offset the broker lost and reused is a new letter
                    "_id": f"{m.topic}:{m.partition}:{m.offset}:{zlib.crc32(m.value or b''):08x}",
                    "Topic": m.topic,
                    "Partition": m.partition,
                    "Offset": m.offset,
                    "Key": m.key,
                    "Value": m.value,
                    "Reason": why_invalid(e),
                    "At": datetime.now(UTC),
                }
            )
            continue
        docs.append(event_document(record, m.partition, m.offset, batch))
    return docs, dead


def store(colls: Collections, messages: list[Message], report: DrainReport, member: int = 0) -> str:
    """Insert one batch (events, then dead letters); idempotent, so a redelivered batch is harmless.

    Returns the aggregation batch (`batches`) the new events went in: a duplicate keeps the
    batch it was stored in."""
    batch_id = open_batch(colls, member)
    docs, dead = split(messages, batch_id)
    stored, dups = insert_new(colls.events, docs, validated=True)  # `split` validated every one
    if not close_batch(colls, batch_id, stored):
        log.warning(
            "aggregation batch %s was abandoned before the drain closed it: its events wait uncounted", batch_id
        )
    dl_new, _ = insert_new(colls.dead_letters, dead)
    report.stored += stored
    report.duplicates += dups
    report.dead_lettered += dl_new
    report.batches += 1
    return batch_id


def _consumer(settings: Settings, member: int) -> KafkaConsumer:
    return kafka_consumer(
        settings.kafka,
        group_id=settings.batch.consumer_group,
        group_instance_id=f"shopstream-batch-drain-{member}",  # 0 unless drains run side by side
        client_id="shopstream-batch",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch.batch_size,
    )


def _wait_for_assignment(
    consumer: KafkaConsumer, deadline: float, clock: Callable[[], float] = time.monotonic
) -> set[TopicPartition]:
    """Poll until the group gives this consumer partitions, or the deadline; what it has then
    (nothing, if a newer run of the same member fenced this one)."""
    try:
        while not consumer.assignment() and clock() < deadline:
            consumer.poll(timeout_ms=200, max_records=1, update_offsets=False)
    except FencedInstanceIdError:
        log.warning("a newer run of this drain member took its place before it got partitions")
        return set()
    return set(consumer.assignment())


def _record_rewind(
    colls: Collections,
    settings: Settings,
    tp: TopicPartition,
    committed: int,
    end: int,
    verdict: Verdict,
    failed: Mark | None,
) -> None:
    rewind = Rewind(
        DRAIN, tp.topic, tp.partition, committed, verdict.resume, end, datetime.now(UTC), verdict.reason or ""
    )
    log.warning("%s", rewind.describe())
    key = f"{failed.offset}:{failed.crc}:{failed.timestamp}" if failed else "-"
    insert_new(colls.rewinds, [drain_document(rewind, settings.batch.consumer_group, key)])  # found again: once


def verify_positions(
    consumer: KafkaConsumer,
    colls: Collections,
    settings: Settings,
    ends: dict[TopicPartition, int],
    report: DrainReport,
) -> dict[TopicPartition, tuple[Mark, ...]]:
    """Seek each assigned partition to where this run must read from, and return the marks
    to go on with. Where the broker lost records past the committed offset, that is the
    newest offset still intact: the rewind is recorded, then committed (so a run that dies
    now does not skip the records), then the marks past it are forgotten."""
    group, topic = settings.batch.consumer_group, settings.kafka.user_events_topic
    stored = load_marks(colls, group, topic)
    lows = consumer.beginning_offsets(list(ends))
    marks: dict[TopicPartition, tuple[Mark, ...]] = {}
    rewound: dict[TopicPartition, int] = {}
    for tp in sorted(ends, key=lambda t: t.partition):
        committed = consumer.committed(tp)
        if committed is None:  # nothing committed yet: from the beginning, as auto_offset_reset says
            consumer.seek(tp, lows[tp])
            marks[tp] = ()
            continue

        def fingerprint_at(offset: int, tp: TopicPartition = tp):
            return record_fingerprints(settings.kafka.bootstrap_servers, {tp: offset}, "shopstream-batch-marks")[tp]

        had = stored.get(tp.partition, ())
        verdict = check(committed, had, lows[tp], ends[tp], fingerprint_at)
        consumer.seek(tp, verdict.resume)
        marks[tp] = verdict.marks
        if verdict.rewound:
            failed = max((m for m in had if m.offset <= committed), key=lambda m: m.offset, default=None)
            _record_rewind(colls, settings, tp, committed, ends[tp], verdict, failed)
            rewound[tp] = verdict.resume
    if rewound:
        report.rewound += len(rewound)
        try:
            consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in rewound.items()})
        except (CommitFailedError, FencedInstanceIdError) as e:  # they are another run's now: it finds the rewind again
            log.warning("could not commit the rewound offsets (the next run finds them again): %s", e)
            return marks
        for tp in rewound:
            save_marks(colls, group, topic, tp.partition, marks[tp])
    return marks


def _waiting(
    settings: Settings, partitions: list[TopicPartition], ends: dict[TopicPartition, int], timeout_ms: int = 10_000
) -> int | None:
    """Records before `ends` past the group's committed offsets on `partitions` (from the
    beginning where the group committed nothing), or None if the broker did not say. A
    consumer of its own with the group's id reads them: an offset fetch is not a join, so
    this never triggers a rebalance."""
    probe = kafka_consumer(
        settings.kafka,
        group_id=settings.batch.consumer_group,
        client_id="shopstream-batch-lag",
        enable_auto_commit=False,
    )
    try:
        lows = probe.beginning_offsets(partitions, timeout_ms=timeout_ms)
        waiting = 0
        for tp in partitions:
            committed = probe.committed(tp, timeout_ms=timeout_ms)
            waiting += max(0, ends[tp] - max(lows[tp], committed or 0))
        return waiting
    except KafkaError as e:
        log.warning(
            "could not read the group's committed offsets on partitions %s: %s",
            sorted(tp.partition for tp in partitions),
            e,
        )
        return None
    finally:
        probe.close()


def drain_user_events(settings: Settings | None = None, budget: Budget | None = None, member: int = 0) -> DrainReport:
    """Drain what waits in UserEvents now into MongoDB, within `budget` (by default
    `batch.max_seconds` from now), as group member `member` (drains run side by side
    each need their own: Airflow's map index, say)."""
    settings = settings or get_settings()
    cfg = settings.batch
    budget = budget or Budget(cfg.max_seconds)
    topic = settings.kafka.user_events_topic
    client = mongo_client(settings.mongo)
    colls = ensure_collections(database(client, settings.mongo), cfg)
    if left_open := abandon_left_open(colls, member):
        log.warning(
            "%d batch(es) an earlier run of this member left open: the aggregation claims their events", left_open
        )
    consumer = _consumer(settings, member)
    report = DrainReport()
    try:
        consumer.subscribe([topic])
        assigned = _wait_for_assignment(consumer, budget.deadline, budget.clock)
        every = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        ends = consumer.end_offsets(every)  # what waits now: this run's targets
        targets = {tp: ends[tp] for tp in assigned if tp in ends}
        # seeks every partition (dropping what the assignment poll fetched), back past a loss if need be
        marks = verify_positions(consumer, colls, settings, targets, report)
        done_upto = {tp: consumer.position(tp) for tp in targets}  # committed by this run, or where it began
        log.info("draining up to %s", {tp.partition: end for tp, end in targets.items()})
        while not budget.expired():
            mine = consumer.assignment()
            pending = [tp for tp, end in targets.items() if tp in mine and consumer.position(tp) < end]
            if not pending:
                break
            size = budget.size(cfg.batch_size, first=min(cfg.batch_size, FIRST_BATCH))
            if not size:
                break
            try:
                polled = consumer.poll(timeout_ms=1000, max_records=size)
            except FencedInstanceIdError:
                log.warning("a newer run of this drain member took its place: stopping")
                break
            # the step is timed from here: the poll's wait for a fetch is no work done per record,
            # and a first batch that came back small after a wait, scaled up to FIRST_BATCH by the
            # budget, ended a run of 60 s after one batch of 11 records
            t0 = budget.clock()
            batch: list[Message] = []
            last: dict[TopicPartition, Message] = {}
            for tp, records in polled.items():
                for r in records:
                    if r.offset < targets.get(tp, 0):
                        batch.append(Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
                        last[tp] = batch[-1]
            if not batch:
                continue
            store(colls, batch, report, member)
            # the marks of the new positions, before the commit: a commit is never unmarked
            for tp, m in last.items():
                marks[tp] = remember(marks.get(tp, ()), Mark.of(m.offset + 1, m.value, m.timestamp))
                save_marks(colls, cfg.consumer_group, tp.topic, tp.partition, marks[tp])
            # MongoDB has the batch: now, and only now, commit past it
            next_offsets = {tp: m.offset + 1 for tp, m in last.items()}
            try:
                consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in next_offsets.items()})
            except (CommitFailedError, FencedInstanceIdError) as e:  # another member or run has them now
                log.warning("offset commit failed after storing the batch (it will be seen again): %s", e)
                break
            budget.took(len(batch), budget.clock() - t0)
            for tp, off in next_offsets.items():
                report.partitions[tp.partition] = done_upto[tp] = off
                if consumer.position(tp) > off:  # records past the target were fetched: read them next run
                    consumer.seek(tp, off)
            log.info(
                "batch %d: %d records, stored %d, duplicates %d, dead-lettered %d so far",
                report.batches,
                len(batch),
                report.stored,
                report.duplicates,
                report.dead_lettered,
            )
        report.remaining = sum(max(0, targets[tp] - done_upto[tp]) for tp in targets)
        others = [tp for tp in every if tp not in targets]
        report.unassigned = [tp.partition for tp in others]
        if others:  # not this run's: what waits there is still waiting
            waiting = _waiting(settings, others, ends)
            report.remaining += waiting or 0
            report.remaining_known = waiting is not None
    finally:
        consumer.close(autocommit=False)
        client.close()
    report.seconds = round(budget.elapsed(), 3)
    log.info("drain done: %s", report.as_dict())
    return report
