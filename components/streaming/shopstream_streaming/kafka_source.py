"""A Kafka streaming source for Spark on PySpark's Python Data Source API (kafka-python).

Spark's own connector (`format("kafka")`) lives in jars no reachable repository serves
here. This source takes the same option names and gives the same columns, so the job
switches between the two with one setting (`SHOPSTREAM_STREAMING__KAFKA_SOURCE`).

Offsets are Spark's: `{"<topic>": {"<partition>": <next offset>}}`, written to the
checkpoint's offsets log before a batch runs, so a restarted query re-reads exactly the
ranges it had planned. Nothing is committed to Kafka (no consumer group), as in Spark.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows, SupportsTriggerAvailableNow

NAME = "pykafka"
# Spark's Kafka source schema, column for column
SCHEMA = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EARLIEST, LATEST = -2, -1  # as in Spark's startingOffsets JSON

Offsets = dict[str, dict[str, int]]  # topic -> partition (as a string: JSON keys) -> offset


class KafkaRange(InputPartition):
    """One Spark task: the records of one topic partition in [start, end)."""

    def __init__(self, topic: str, partition: int, start: int, end: int) -> None:
        self.topic, self.partition, self.start, self.end = topic, partition, start, end

    def __repr__(self) -> str:
        return f"KafkaRange({self.topic}-{self.partition} [{self.start}, {self.end}))"


class KafkaSource(DataSource):
    """`spark.readStream.format("pykafka")`, options as for `format("kafka")`:
    kafka.bootstrap.servers, subscribe (comma-separated topics), startingOffsets
    (earliest | latest | JSON), maxOffsetsPerTrigger, failOnDataLoss, kafkaConsumer.pollTimeoutMs."""

    @classmethod
    def name(cls) -> str:
        return NAME

    def schema(self) -> str:
        return SCHEMA

    def streamReader(self, schema) -> KafkaStreamReader:
        return KafkaStreamReader(self.options)


class KafkaStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    def __init__(self, options: dict[str, str]) -> None:
        self.bootstrap = options["kafka.bootstrap.servers"]
        self.topics = [t.strip() for t in options["subscribe"].split(",") if t.strip()]
        self.starting = options.get("startingOffsets", "latest")  # Spark's default for streams
        self.max_per_trigger = int(options["maxOffsetsPerTrigger"]) if options.get("maxOffsetsPerTrigger") else None
        self.fail_on_data_loss = options.get("failOnDataLoss", "true").lower() == "true"
        # how long a task waits for records it knows exist before it fails (and Spark retries)
        self.poll_timeout_s = int(options.get("kafkaConsumer.pollTimeoutMs", "120000")) / 1000
        self._consumer = None  # metadata client, on the driver only
        self._target: Offsets | None = None  # Trigger.AvailableNow: stop here

    # -- driver side ---------------------------------------------------------------
    def _client(self):
        if self._consumer is None:
            from kafka import KafkaConsumer

            self._consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                           client_id="shopstream-spark-source")
        return self._consumer

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

    def initialOffset(self) -> Offsets:
        bounds = self._bounds()
        if self.starting in ("earliest", "latest"):
            pick = 0 if self.starting == "earliest" else 1
            return {t: {p: b[pick] for p, b in parts.items()} for t, parts in bounds.items()}
        given = json.loads(self.starting)  # {"topic": {"0": 23, "1": -2}}, -2 earliest, -1 latest
        out: Offsets = {}
        for t, parts in bounds.items():
            out[t] = {}
            for p, (lo, hi) in parts.items():
                off = int(given.get(t, {}).get(p, EARLIEST))
                out[t][p] = lo if off == EARLIEST else hi if off == LATEST else off
        return out

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_per_trigger) if self.max_per_trigger else ReadAllAvailable()

    def prepareForTriggerAvailableNow(self) -> None:
        self._target = {t: {p: hi for p, (_lo, hi) in parts.items()} for t, parts in self._bounds().items()}

    def latestOffset(self, start: Offsets, limit: ReadLimit) -> Offsets:
        """Where the next batch ends: everything available, or `limit` rows shared out in
        proportion to each partition's backlog (as Spark's source does), so partitions
        catch up together and the event-time watermark sees no partition far behind."""
        bounds = self._bounds()
        begin: Offsets = {}
        end: Offsets = {}
        for t, parts in bounds.items():
            begin[t], end[t] = {}, {}
            for p, (lo, hi) in parts.items():
                if self._target is not None:
                    hi = min(hi, self._target.get(t, {}).get(p, hi))
                frm = start.get(t, {}).get(p)
                if frm is None:  # a partition new since the last batch: all of it
                    frm = lo
                elif not lo <= frm <= hi:
                    self._data_loss(t, p, frm, lo, hi)
                    frm = min(max(frm, lo), hi)
                begin[t][p], end[t][p] = frm, max(hi, frm)
        if isinstance(limit, ReadMaxRows):
            backlog = sum(e - begin[t][p] for t, parts in end.items() for p, e in parts.items())
            if backlog > limit.max_rows:
                for t, parts in end.items():
                    for p, e in parts.items():
                        share = limit.max_rows * (e - begin[t][p]) / backlog
                        take = math.ceil(share) if share < 1 else math.floor(share)
                        parts[p] = min(e, begin[t][p] + take)
        return end

    def _data_loss(self, topic: str, partition: str, offset: int, lo: int, hi: int) -> None:
        msg = (f"{topic}-{partition}: the checkpoint is at offset {offset}, the broker has [{lo}, {hi}); "
               "records were deleted or the topic was recreated")
        if self.fail_on_data_loss:
            raise RuntimeError(f"{msg}. Set failOnDataLoss=false to skip to what is there.")

    def reportLatestOffset(self) -> Offsets:
        return {t: {p: hi for p, (_lo, hi) in parts.items()} for t, parts in self._bounds().items()}

    def partitions(self, start: Offsets, end: Offsets) -> list[KafkaRange]:
        return [KafkaRange(t, int(p), start.get(t, {}).get(p, 0), e)
                for t, parts in end.items() for p, e in sorted(parts.items(), key=lambda kv: int(kv[0]))
                if e > start.get(t, {}).get(p, 0)]

    def commit(self, end: Offsets) -> None:
        """Spark's checkpoint holds the offsets; nothing to tell Kafka."""

    def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # -- executor side -------------------------------------------------------------
    def read(self, partition: KafkaRange) -> Iterator[tuple]:
        """Every record of the range, in offset order; fails rather than returning short."""
        from kafka import KafkaConsumer, TopicPartition

        tp = TopicPartition(partition.topic, partition.partition)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                 client_id="shopstream-spark-reader", auto_offset_reset="earliest",
                                 max_poll_records=5000)
        try:
            consumer.assign([tp])
            consumer.seek(tp, partition.start)
            deadline = time.monotonic() + self.poll_timeout_s
            while consumer.position(tp) < partition.end:
                batch = consumer.poll(timeout_ms=500).get(tp, [])
                if batch:
                    deadline = time.monotonic() + self.poll_timeout_s
                elif time.monotonic() > deadline:
                    raise TimeoutError(f"{partition!r}: no records from {self.bootstrap} "
                                       f"for {self.poll_timeout_s:.0f} s at offset {consumer.position(tp)}")
                for m in batch:
                    if m.offset >= partition.end:
                        return
                    yield (m.key, m.value, m.topic, m.partition, m.offset,
                           EPOCH + timedelta(milliseconds=m.timestamp), m.timestamp_type)
        finally:
            consumer.close()
