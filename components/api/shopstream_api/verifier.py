"""Reads journaled records back from the broker and publishes again those it lost.

Every journaled record is checked twice: once `journal_verify_interval_s` after its
acknowledgement (a broker that crashed and came back is found within seconds), and once
`journal_retention_s` after it (by then the broker has long written it to its own disk;
a crash in between shows here). A check reads the partition at the record's offset and
compares a CRC of the value: a record the broker forgot is either past the partition's
end now, or its offset holds another record (written after the loss, reusing the offset).
Each record is checked on its own, so no assumption about how the broker loses data is
needed. A lost record is published again and journaled with its new position; the stores
keep one copy per EventId. A broker that cannot be reached is simply checked later: no
record leaves the journal without its second check.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
import zlib
from dataclasses import dataclass, field
from itertools import takewhile

from confluent_kafka import Consumer, KafkaException, TopicPartition

from shopstream.adapters.kafka_rd import rd_consumer
from shopstream.settings import Settings

from .journal import Checked, Entry, Journal
from .metrics import ApiMetrics
from .publisher import BrokerUnavailable, KafkaPublisher

log = logging.getLogger(__name__)

SEEK_GAP = 5000  # offsets between two wanted records past which a seek beats reading through
READ_CHUNK = 1000  # records per consume() call
READ_TIMEOUT_S = 60.0  # one partition's read-back; then the check is postponed to the next round


@dataclass
class Round:
    """What one pass over the due entries found."""

    checked: int = 0
    confirmed: int = 0  # passed their final check and left the journal
    lost: dict[str, int] = field(default_factory=dict)  # topic -> records the broker no longer holds
    republished: int = 0


class Verifier:
    def __init__(self, settings: Settings, journal: Journal, publisher: KafkaPublisher, metrics: ApiMetrics) -> None:
        self.settings, self.journal, self.publisher, self.metrics = settings, journal, publisher, metrics
        self.interval = settings.api.journal_verify_interval_s
        self.retention = settings.api.journal_retention_s
        self._consumer: Consumer | None = None
        self._reading = threading.Lock()  # the consumer: a read in its thread vs closing it
        self._closing = threading.Event()

    async def run(self) -> None:
        """Check every `interval` until cancelled; a failed round is retried in the next."""
        from shopstream import ledger

        pruned_at = 0.0
        while True:
            try:
                await self.check_once()
            except (KafkaException, TimeoutError, OSError, BrokerUnavailable) as e:
                log.warning("journal check postponed, the broker is not answering: %r", e)
                await self._close_consumer()
            if time.monotonic() - pruned_at > 600:
                await asyncio.to_thread(ledger.prune, self.settings)
                pruned_at = time.monotonic()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        self._closing.set()  # a read still running in its thread stops within a second
        await self._close_consumer()

    async def check_once(self, now: float | None = None) -> Round:
        """Check what is due now; publish again what the broker lost."""
        now = time.time() if now is None else now
        result = Round()
        with self.journal.lock:
            due = {
                tp: (
                    list(takewhile(lambda e: e.acked + self.interval <= now, p.first)),
                    list(takewhile(lambda e: e.acked + self.retention <= now, p.final)),
                )
                for tp, p in self.journal.pending.items()
            }
        due = {tp: lists for tp, lists in due.items() if lists[0] or lists[1]}
        for (topic, partition), (first, final) in due.items():
            wanted = {e.offset for e in first}.union(*(run.offsets for run in final))
            held = await self._read_back(topic, partition, sorted(wanted))

            def intact(e: Entry, held: dict[int, int] = held) -> bool:  # this partition's `held`, bound now
                return held.get(e.offset) == e.crc

            with self.journal.lock:
                p = self.journal.pending[(topic, partition)]
                for _ in first:
                    p.first.popleft()
                for _ in final:
                    p.final.popleft()
                p.final.extend(Checked.runs([e for e in first if intact(e)]))
            lost = [e for e in first if not intact(e)]
            for run in final:
                gone = {o: crc for o, crc in zip(run.offsets, run.crcs, strict=True) if held.get(o) != crc}
                self.journal.release_checked(run.segment, len(run) - len(gone))
                result.confirmed += len(run) - len(gone)
                if gone:
                    found = await asyncio.to_thread(self.journal.entries, run, dict(gone))
                    if len(found) < len(gone):  # never, short of a damaged segment: nothing to publish
                        log.error("%d lost record(s) not found in %s", len(gone) - len(found), run.segment.path)
                        self.journal.release_checked(run.segment, len(gone) - len(found))
                    lost += found
            result.checked += len(first) + sum(map(len, final))
            if lost:  # now, before another partition's read can fail: they are out of `pending`
                await self._republish(topic, lost)
                result.lost[topic] = result.lost.get(topic, 0) + len(lost)
                result.republished += len(lost)
        entries_left, size = self.journal.stats()
        self.metrics.journal_records.set(entries_left)
        self.metrics.journal_bytes.set(size)
        return result

    async def _republish(self, topic: str, entries: list[Entry]) -> None:
        """Publish lost records again and journal their new positions; on failure they wait for the next round."""
        log.warning(
            "the broker lost %d acknowledged record(s) of %s (e.g. partition %d offset %d); publishing them again",
            len(entries),
            topic,
            entries[0].partition,
            entries[0].offset,
        )
        records = [self.journal.read(e) for e in entries]
        try:
            acks = await self.publisher.publish(topic, [(r.key, r.value) for r in records])
            await self.journal.append(topic, records, [(a.partition, a.offset) for a in acks])
        except BaseException:
            with self.journal.lock:  # checked again, first thing, in the next round
                for e in reversed(entries):
                    self.journal.pending[(e.topic, e.partition)].first.appendleft(e)
            raise
        self.journal.release(entries)
        self.metrics.broker_losses.labels(topic).inc()
        self.metrics.republished.labels(topic).inc(len(entries))

    # -- reading the broker's copy -----------------------------------------------------------------
    async def _read_back(self, topic: str, partition: int, offsets: list[int]) -> dict[int, int]:
        """CRC of the value at each of the (sorted) offsets the partition still holds.

        Read in a thread of its own: librdkafka fetches and decodes the records in C, and the
        loop serving requests only waits for the result."""
        return await asyncio.to_thread(self._read_sync, topic, partition, offsets)

    def _read_sync(self, topic: str, partition: int, offsets: list[int]) -> dict[int, int]:
        with self._reading:
            if self._closing.is_set():
                raise TimeoutError("the API is stopping")
            if self._consumer is None:
                self._consumer = rd_consumer(
                    self.settings.kafka,
                    **{
                        "client.id": "shopstream-api-journal",
                        "group.id": "shopstream-api-journal",  # required by the client; never joined nor committed
                        "enable.auto.commit": False,
                        "enable.auto.offset.store": False,
                        "auto.offset.reset": "earliest",  # below the log's start: read on, those offsets are missing
                        "fetch.wait.max.ms": 100,
                        # it fetches ahead of what is consumed; a check wants a range, often far from the end
                        "queued.min.messages": READ_CHUNK,
                        "queued.max.messages.kbytes": 4096,
                        "socket.timeout.ms": 10_000,
                        "logger": log,
                    },
                )
            consumer = self._consumer
            try:
                return _read(consumer, topic, partition, offsets, time.monotonic() + READ_TIMEOUT_S, self._closing)
            finally:
                # an assigned partition is fetched in the background until the next check: unassign it
                consumer.unassign()

    async def _close_consumer(self) -> None:
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._reading:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                consumer.close()


def _read(
    consumer: Consumer, topic: str, partition: int, offsets: list[int], deadline: float, stop: threading.Event
) -> dict[int, int]:
    def end() -> int:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]

    wanted = offsets[: bisect.bisect_left(offsets, end())]
    held: dict[int, int] = {}
    i = 0  # wanted[:i] are passed
    position: int | None = None  # the next offset the assignment delivers
    while i < len(wanted):
        if stop.is_set():
            raise TimeoutError("the API is stopping")
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic}/{partition} back took over {READ_TIMEOUT_S:.0f} s")
        if position is None or not wanted[i] - SEEK_GAP <= position <= wanted[i]:
            consumer.assign([TopicPartition(topic, partition, wanted[i])])
            position = wanted[i]
        # consume() waits for as many records as asked for: ask for no more than the range holds
        records = consumer.consume(min(READ_CHUNK, wanted[-1] - position + 1), timeout=1.0)
        if not records:
            if end() <= wanted[i]:  # truncated while we read
                break
            continue
        for r in records:
            if r.error() is not None:
                raise KafkaException(r.error())
            offset = r.offset()
            assert offset is not None  # a record (not an error event) has one
            while i < len(wanted) and wanted[i] < offset:  # not in the log (never, short of compaction)
                i += 1
            if i < len(wanted) and wanted[i] == offset:
                held[offset] = zlib.crc32(r.value() or b"")
                i += 1
            position = offset + 1
    return held
