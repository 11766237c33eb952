"""A Kafka streaming source for Spark on PySpark's Python Data Source API (offsets and
metadata with kafka-python on the driver, records read with librdkafka in the tasks).

Spark's own connector (`format("kafka")`) lives in jars no reachable repository serves
here. This source takes the same option names and gives the same columns, so the job
switches between the two with one setting (`SHOPSTREAM_STREAMING__KAFKA_SOURCE`). Tasks
hand their records to Spark as Arrow batches, one per poll of the broker; a small batch is
read by one task whatever the number of partitions (`pack`).

Offsets are Spark's: `{"<topic>": {"<partition>": <next offset>}}`, written to the
checkpoint's offsets log before a batch runs, so a restarted query re-reads exactly the
ranges it had planned. Nothing is committed to Kafka (no consumer group), as in Spark.

Beside the positions, the offset carries the marks of each partition's last positions
(`"@marks"`, `shopstream.marks`; topic names cannot hold "@", so readers of the positions
skip those keys). Each trigger checks them: where the broker lost records past a
position (the position is past the end, or the records there were replaced), the batch
reads again from the newest position still intact. That resume point travels in the
batch's end offset (`"@from"`), so a restart replays the same plan; the rewind is logged
and recorded (`shopstream.rewinds`). failOnDataLoss still applies to records deleted by
retention (a position before the log's start).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

from shopstream.marks import Fingerprint, Mark, check, remember
from shopstream.rewinds import STREAMING, Rewind, append_line

log = logging.getLogger(__name__)

NAME = "pykafka"
# Spark's Kafka source schema, column for column
SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
EARLIEST, LATEST = -2, -1  # as in Spark's startingOffsets JSON

Offsets = dict[str, dict[str, int]]  # topic -> partition (as a string: JSON keys) -> offset
MARKS, FROM = "@marks", "@from"  # extra keys of our offset JSON; no topic name has an "@"
# options of this source only: where it records its rewinds, and the query's name for them
REWINDS_FILE, QUERY = "shopstream.rewindsFile", "shopstream.query"
CORES = "shopstream.cores"  # option: the cores the query's tasks run on (`pack`)
READ_CHUNK = 5000  # records per consume() call, one Arrow batch at most
TASK_RECORDS = 20_000  # records a task reads before a batch is split across more tasks (`pack`)


def positions(offset: dict[str, Any]) -> Offsets:
    """The `{"<topic>": {"<partition>": offset}}` part of one of our offsets (marks and the
    resume point left out): what readers of the job's progress want."""
    return {t: parts for t, parts in offset.items() if not t.startswith("@")}


def _marks_of(offset: dict[str, Any], topic: str, partition: str) -> tuple[Mark, ...]:
    return tuple(Mark.from_list(x) for x in offset.get(MARKS, {}).get(topic, {}).get(partition, ()))


class KafkaRange:
    """The records of one topic partition in [start, end)."""

    def __init__(self, topic: str, partition: int, start: int, end: int) -> None:
        self.topic, self.partition, self.start, self.end = topic, partition, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"KafkaRange({self.topic}-{self.partition} [{self.start}, {self.end}))"


class KafkaTask(InputPartition):
    """One Spark task: one or more ranges, read one after the other by one consumer."""

    def __init__(self, ranges: list[KafkaRange]) -> None:
        self.ranges = ranges

    def __repr__(self) -> str:
        return f"KafkaTask({', '.join(map(repr, self.ranges))})"


def pack(ranges: list[KafkaRange], per_task: int, cores: int = 1) -> list[KafkaTask]:
    """The ranges as tasks of about `per_task` records or more, one range per task at most
    as many tasks as ranges. A task costs a Python worker's round trip, a consumer and its
    connection whatever it reads: a batch of a few records per partition (the stack at rest:
    about 40 in 5 s over 6 partitions) is read by one task, not one per partition, and a
    backlog is still split across the cores. A batch of more than one task has a multiple of
    `cores` tasks where the ranges allow (5 tasks on 2 cores leave one core idle while the
    last runs). Ranges go largest first to the task with the fewest records; each task reads
    its ranges in topic and partition order."""
    if not ranges:
        return []
    n = max(1, min(len(ranges), math.ceil(sum(map(len, ranges)) / per_task)))
    if n > 1:
        n = min(len(ranges), math.ceil(n / cores) * cores)
    tasks: list[list[KafkaRange]] = [[] for _ in range(n)]
    sizes = [0] * n
    for r in sorted(ranges, key=len, reverse=True):
        i = sizes.index(min(sizes))
        tasks[i].append(r)
        sizes[i] += len(r)
    return [KafkaTask(sorted(t, key=lambda r: (r.topic, r.partition))) for t in tasks if t]


class KafkaSource(DataSource):
    """`spark.readStream.format("pykafka")`, options as for `format("kafka")`:
    kafka.bootstrap.servers, subscribe (comma-separated topics), startingOffsets
    (earliest | latest | JSON), maxOffsetsPerTrigger, failOnDataLoss, kafkaConsumer.pollTimeoutMs,
    kafka.request.timeout.ms (connect and request timeout of its clients)."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: Mapping[str, str]) -> None:
        self.bootstrap = options["kafka.bootstrap.servers"]
        self.topics = [t.strip() for t in options["subscribe"].split(",") if t.strip()]
        self.starting = options.get("startingOffsets", "latest")  # Spark's default for streams
        self.max_per_trigger = int(options["maxOffsetsPerTrigger"]) if options.get("maxOffsetsPerTrigger") else None
        self.fail_on_data_loss = options.get("failOnDataLoss", "true").lower() == "true"
        # how long a task waits for records it knows exist before it fails (and Spark retries)
        self.poll_timeout_s = int(options.get("kafkaConsumer.pollTimeoutMs", "120000")) / 1000
        # how long a client waits to connect, or for an answer, before the broker counts as gone
        timeout_ms = int(options.get("kafka.request.timeout.ms", "30000"))
        self.client_timeouts = {"request_timeout_ms": timeout_ms, "bootstrap_timeout_ms": timeout_ms}
        self.rewinds_file = options.get(REWINDS_FILE) or None
        self.query = options.get(QUERY) or None
        self.cores = int(options.get(CORES) or 1)
        self._consumer = None  # metadata client, on the driver only
        self._target: Offsets | None = None  # Trigger.AvailableNow: stop here

    # -- driver side ---------------------------------------------------------------
    def _client(self):
        if self._consumer is None:
            from shopstream.adapters.kafka import kafka_consumer

            self._consumer = kafka_consumer(
                self.bootstrap, enable_auto_commit=False, client_id="shopstream-spark-source", **self.client_timeouts
            )
        return self._consumer

    def _fingerprints(self, wanted: dict[tuple[str, str], int]) -> dict[tuple[str, str], Fingerprint | None]:
        """(topic, partition) -> the fingerprint of the record at the given offset."""
        from kafka import TopicPartition

        from shopstream.adapters.kafka import record_fingerprints

        if not wanted:
            return {}
        got = record_fingerprints(
            self.bootstrap,
            {TopicPartition(t, int(p)): o for (t, p), o in wanted.items()},
            "shopstream-spark-marks",
            timeout_s=self.client_timeouts["request_timeout_ms"] / 1000,  # as patient as the source's other calls
        )
        return {(tp.topic, str(tp.partition)): fp for tp, fp in got.items()}

    def _bounds(self) -> dict[str, dict[str, tuple[int, int]]]:
        """(earliest, next) offset of every partition of the subscribed topics, now."""
        from kafka import TopicPartition

        client = self._client()
        tps = [TopicPartition(t, p) for t in self.topics for p in sorted(client.partitions_for_topic(t) or ())]
        lows, highs = client.beginning_offsets(tps), client.end_offsets(tps)
        bounds: dict[str, dict[str, tuple[int, int]]] = {t: {} for t in self.topics}
        for tp in tps:
            bounds[tp.topic][str(tp.partition)] = (lows[tp], highs[tp])
        return bounds

    def _with_marks(
        self, ends: Offsets, kept: dict[str, dict[str, tuple[Mark, ...]]], bounds: dict[str, dict[str, tuple[int, int]]]
    ) -> dict[str, Any]:
        """`ends` plus the marks of every partition: those kept, and the mark of each end
        that has none yet (a fingerprint of the record before it). Built in the same order
        every time, so an unchanged offset serializes the same and Spark sees no new data."""

        def newest(t: str, p: str) -> int | None:
            have = kept.get(t, {}).get(p)
            return have[-1].offset if have else None

        unmarked = {
            (t, p): e - 1
            for t, parts in ends.items()
            for p, e in parts.items()
            if e > bounds[t].get(p, (e, e))[0] and newest(t, p) != e
        }
        found = self._fingerprints(unmarked)
        marks: dict[str, dict[str, list[list[int]]]] = {}
        for t, parts in ends.items():
            for p, e in parts.items():
                have = kept.get(t, {}).get(p, ())
                if (fp := found.get((t, p))) is not None:
                    have = remember(have, Mark(e, *fp))
                if have:
                    marks.setdefault(t, {})[p] = [m.as_list() for m in have]
        return {**ends, MARKS: marks} if marks else dict(ends)

    def initialOffset(self) -> dict[str, Any]:
        bounds = self._bounds()
        if self.starting in ("earliest", "latest"):
            pick = 0 if self.starting == "earliest" else 1
            out: Offsets = {t: {p: b[pick] for p, b in parts.items()} for t, parts in bounds.items()}
        else:
            given = json.loads(self.starting)  # {"topic": {"0": 23, "1": -2}}, -2 earliest, -1 latest
            out = {}
            for t, parts in bounds.items():
                out[t] = {}
                for p, (lo, hi) in parts.items():
                    off = int(given.get(t, {}).get(p, EARLIEST))
                    out[t][p] = lo if off == EARLIEST else hi if off == LATEST else off
        return self._with_marks(out, {}, bounds)  # marks from the start: a loss below it is seen too

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_per_trigger) if self.max_per_trigger else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = {t: {p: hi for p, (_lo, hi) in parts.items()} for t, parts in self._bounds().items()}

    def latestOffset(self, start: dict[str, Any], limit: ReadLimit) -> dict[str, Any]:
        """Where the next batch ends: everything available, or `limit` rows shared out in
        proportion to each partition's backlog (as Spark's source does), so partitions
        catch up together and the event-time watermark sees no partition far behind.
        Where the broker lost records past the start, the batch begins earlier ("@from")."""
        bounds = self._bounds()
        begin, kept, rewound = self._verify(start, bounds)
        end: Offsets = {}
        for t, parts in bounds.items():
            end[t] = {}
            for p, (_lo, hi) in parts.items():
                if self._target is not None:
                    hi = min(hi, self._target.get(t, {}).get(p, hi))
                end[t][p] = max(hi, begin[t][p])
        self._hold_unlisted(start, bounds, begin, kept, end)
        if isinstance(limit, ReadMaxRows):
            backlog = sum(e - begin[t][p] for t, parts in end.items() for p, e in parts.items())
            if backlog > limit.max_rows:
                for t, ends in end.items():
                    for p, e in ends.items():
                        share = limit.max_rows * (e - begin[t][p]) / backlog
                        take = math.ceil(share) if share < 1 else math.floor(share)
                        ends[p] = min(e, begin[t][p] + take)
        out = self._with_marks(end, kept, bounds)
        return {**out, FROM: rewound} if rewound else out

    def _hold_unlisted(
        self,
        start: dict[str, Any],
        bounds: dict[str, dict[str, tuple[int, int]]],
        begin: Offsets,
        kept: dict[str, dict[str, tuple[Mark, ...]]],
        end: Offsets,
    ) -> None:
        """Keep the position and marks of each partition the start knows but the broker's
        metadata does not list now (a broker still starting answers with no partitions).
        Dropped from the end, it would count as new at the next batch and be read again
        from its beginning."""
        at = positions(start)
        for t, listed in bounds.items():
            unlisted = {p: frm for p, frm in at.get(t, {}).items() if p not in listed}
            if not unlisted:
                continue
            log.warning("%s: the broker lists no partition %s for now; holding at %s", t, ",".join(unlisted), unlisted)
            for p, frm in unlisted.items():
                begin[t][p] = end[t][p] = frm
                kept[t][p] = _marks_of(start, t, p)
            end[t] = dict(sorted(end[t].items(), key=lambda kv: int(kv[0])))  # same order, same JSON

    def _verify(self, start: dict[str, Any], bounds: dict[str, dict[str, tuple[int, int]]]):
        """(where each partition's next batch begins, the marks still good, the rewound
        partitions' resume points). The newest mark of every partition is looked up in one
        fetch; a walk back (rare) looks up one record at a time."""
        at = positions(start)
        newest = {}
        for t, parts in bounds.items():
            for p, (lo, hi) in parts.items():
                frm, marks = at.get(t, {}).get(p), _marks_of(start, t, p)
                top = max((m.offset for m in marks if frm is not None and m.offset <= frm), default=None)
                if top is not None and lo < top <= hi:
                    newest[(t, p)] = top - 1
        prefetched = self._fingerprints(newest)
        begin: Offsets = {}
        kept: dict[str, dict[str, tuple[Mark, ...]]] = {}
        rewound: Offsets = {}
        for t, parts in bounds.items():
            begin[t], kept[t] = {}, {}
            for p, (lo, hi) in parts.items():
                frm = at.get(t, {}).get(p)
                if frm is None:  # a partition new since the last batch: all of it
                    begin[t][p] = lo
                    continue
                if frm < lo:  # deleted by retention (or the topic was recreated)
                    self._data_loss(t, p, frm, lo, hi)
                    begin[t][p] = lo
                    continue

                def fingerprint_at(offset: int, t: str = t, p: str = p) -> Fingerprint | None:
                    if newest.get((t, p)) == offset:
                        return prefetched.get((t, p))
                    return self._fingerprints({(t, p): offset}).get((t, p))

                verdict = check(frm, _marks_of(start, t, p), lo, hi, fingerprint_at)
                begin[t][p], kept[t][p] = verdict.resume, verdict.marks
                if verdict.rewound:
                    self._record(
                        Rewind(STREAMING, t, int(p), frm, verdict.resume, hi, datetime.now(UTC), verdict.reason or "")
                    )
                    rewound.setdefault(t, {})[p] = verdict.resume
        return begin, kept, rewound

    def _record(self, rewind: Rewind) -> None:
        log.warning("%s%s", rewind.describe(), f" (query {self.query})" if self.query else "")
        if self.rewinds_file:
            append_line(Path(self.rewinds_file), rewind, query=self.query)

    def _data_loss(self, topic: str, partition: str, offset: int, lo: int, hi: int) -> None:
        msg = (
            f"{topic}-{partition}: the checkpoint is at offset {offset}, the broker has [{lo}, {hi}); "
            "records were deleted or the topic was recreated"
        )
        if self.fail_on_data_loss:
            raise RuntimeError(f"{msg}. Set failOnDataLoss=false to skip to what is there.")

    def reportLatestOffset(self) -> Offsets:
        return {t: {p: hi for p, (_lo, hi) in parts.items()} for t, parts in self._bounds().items()}

    def partitions(self, start: dict[str, Any], end: dict[str, Any]) -> list[KafkaTask]:
        """The tasks that read the ranges between two offsets (`pack`); a batch that rewinds
        begins at its "@from"."""
        frm = {t: {**parts, **end.get(FROM, {}).get(t, {})} for t, parts in positions(start).items()}
        for t, parts in end.get(FROM, {}).items():
            frm.setdefault(t, dict(parts))
        ranges = [
            KafkaRange(t, int(p), frm.get(t, {}).get(p, 0), e)
            for t, parts in positions(end).items()
            for p, e in sorted(parts.items(), key=lambda kv: int(kv[0]))
            if e > frm.get(t, {}).get(p, 0)
        ]
        return pack(ranges, TASK_RECORDS, self.cores)

    def commit(self, end: dict[str, Any]) -> None:
        """Spark's checkpoint holds the offsets; nothing to tell Kafka."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # -- executor side -------------------------------------------------------------
    def read(self, partition: InputPartition) -> Iterator[pa.RecordBatch]:
        """Every record of the task's ranges, each in offset order, as Arrow batches (one per
        `consume` call: Spark takes them as they are, with no conversion per row); fails rather
        than returning short. Read with librdkafka, which fetches and decodes in C: a quarter to a
        third of kafka-python's time per record here, in the worker that also hands them to Spark."""
        task = cast(KafkaTask, partition)  # Spark hands back the tasks `partitions` made
        from shopstream.adapters.kafka_rd import rd_consumer

        consumer = rd_consumer(
            self.bootstrap,
            **{
                "client.id": "shopstream-spark-reader",
                "group.id": "shopstream-spark-reader",  # required by the client; never joined nor committed
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",  # below the log's start: read on from there
                "socket.timeout.ms": self.client_timeouts["request_timeout_ms"],
                # it fetches ahead of what is consumed (100,000 records by default): not far past a range
                "queued.min.messages": READ_CHUNK,
                "logger": log,
            },
        )
        try:
            for r in task.ranges:
                yield from self._read_range(consumer, r)
        finally:
            consumer.close()

    def _read_range(self, consumer, r: KafkaRange) -> Iterator[pa.RecordBatch]:
        from confluent_kafka import TopicPartition

        tp = TopicPartition(r.topic, r.partition, r.start)
        consumer.assign([tp])  # in place of the previous range's
        deadline = time.monotonic() + self.poll_timeout_s
        at = r.start
        while True:
            # consume() waits for as many records as asked, up to its timeout: ask for what is left
            batch = consumer.consume(min(READ_CHUNK, r.end - at), timeout=0.5)
            if batch:
                deadline = time.monotonic() + self.poll_timeout_s
            records = []
            for m in batch:
                if m.error() is not None:  # librdkafka retries on its own; the deadline bounds it
                    log.warning("%r: %s", r, m.error())
                # past the end: not this range's; before the start: re-read from the log's start
                # after an out-of-range reset
                elif r.start <= m.offset() < r.end:
                    records.append(m)
            if records:
                yield arrow_batch(records)
                at = records[-1].offset() + 1
                if at >= r.end:
                    return
            elif consumer.position([tp])[0].offset >= r.end:  # a gap up to the end
                return
            elif time.monotonic() > deadline:
                raise TimeoutError(
                    f"{r!r}: no records from {self.bootstrap} for {self.poll_timeout_s:.0f} s at offset {at}"
                )


ARROW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("timestampType", pa.int32()),
    ]
)  # SCHEMA, as Spark expects it in Arrow


def arrow_batch(records: list) -> pa.RecordBatch:
    """confluent-kafka's messages as one Arrow batch of SCHEMA (librdkafka's timestamp types
    are 1 for CreateTime and 2 for LogAppendTime, Spark's 0 and 1)."""
    stamps = [m.timestamp() for m in records]
    return pa.RecordBatch.from_arrays(
        [
            pa.array([m.key() for m in records], pa.binary()),
            pa.array([m.value() for m in records], pa.binary()),
            pa.array([m.topic() for m in records], pa.string()),
            pa.array([m.partition() for m in records], pa.int32()),
            pa.array([m.offset() for m in records], pa.int64()),
            pa.array([ms * 1000 for _kind, ms in stamps], pa.timestamp("us", tz="UTC")),
            pa.array([kind - 1 for kind, _ms in stamps], pa.int32()),
        ],
        schema=ARROW_SCHEMA,
    )
