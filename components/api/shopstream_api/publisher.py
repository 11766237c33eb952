"""Publishing to Kafka with acknowledgement (librdkafka via confluent-kafka, acks=all, idempotent).

A request is answered only after the broker acknowledged every record it carries.
librdkafka batches and sends in its own threads; one poller thread of ours collects its
delivery reports and wakes the event loop once per poll, for every request completed
meanwhile. The API stays up (and says 503) while the broker is away, and recovers when
it is back.

librdkafka itself bounds a record's life: a record not acknowledged within
`publish_timeout_s` (`message.timeout.ms`) is failed and never sent after that. On any
failure the producer is thrown away at once: everything it still holds, queued or in
flight, is purged (so not sent later, though those requests get a 503 too) and the next
request starts a new producer. Records already written to the broker are in doubt (the
broker may have stored them), hence the advice to retry with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message

from shopstream.adapters.kafka_rd import rd_producer
from shopstream.settings import ApiSettings, KafkaSettings

from .metrics import ApiMetrics

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """Kafka did not acknowledge in time; the records may or may not have been stored."""


@dataclass(frozen=True, slots=True)
class Ack:
    partition: int
    offset: int


class _Request:
    """The records of one publish, acknowledged one by one in the poller thread."""

    __slots__ = ("acks", "error", "future", "left")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.acks: list[Ack | None] = [None] * n
        self.left, self.future = n, future
        self.error: str | None = None

    def settle(self) -> None:  # on the event loop
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(BrokerUnavailable(self.error))
        else:
            self.future.set_result(self.acks)


class _Producer:
    """One librdkafka producer and the thread that polls its delivery reports."""

    def __init__(self, kafka: KafkaSettings, api: ApiSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client = rd_producer(
            kafka,
            **{
                "client.id": "shopstream-api",
                "acks": "all",
                "enable.idempotence": True,  # broker-side retries never duplicate a record
                "linger.ms": api.linger_ms,
                "message.timeout.ms": int(api.publish_timeout_s * 1000),  # then failed, never sent later
                "compression.type": api.compression,
                "error_cb": self._on_error,
                "logger": log,  # librdkafka's own log lines go through logging, not straight to stderr
            },
        )
        self.failed: str | None = None  # why this producer must not be used any more
        self._aborted = False
        self._done: list[_Request] = []  # settled in the poller thread since its last wake-up
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _on_error(self, error: KafkaError) -> None:  # poller thread: connection errors, mostly transient
        if error.fatal():
            self.failed = self.failed or f"the producer failed: {error.str()}"

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.poll(0.05)
            except KafkaException as e:  # a fatal error: the reports still come, the producer is replaced
                self.failed = self.failed or f"the producer failed: {e}"
            if self._done:
                done, self._done = self._done, []
                self.loop.call_soon_threadsafe(_settle_all, done)

    def callback(self, request: _Request, i: int) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, msg: Message) -> None:  # poller thread
            if error is not None:
                request.error = request.error or error.str()
            else:
                request.acks[i] = Ack(msg.partition() or 0, msg.offset() or 0)  # set on a delivered record
            request.left -= 1
            if request.left == 0:
                self._done.append(request)

        return delivered

    def abort(self, reason: str) -> None:
        """Purge what is queued or in flight (never sent after this), then release the client."""
        if self._aborted:
            return
        self._aborted, self.failed = True, self.failed or reason
        self.client.purge(in_queue=True, in_flight=True, blocking=False)
        threading.Thread(target=self._release, name="kafka-release", daemon=True).start()

    def _release(self) -> None:
        self.client.flush(10)  # delivers the purge reports: every waiting request learns
        self._stop.set()
        self._thread.join()
        if self._done:
            self.loop.call_soon_threadsafe(_settle_all, self._done)

    def close(self, timeout_s: float) -> int:
        """Deliver what is pending (for at most `timeout_s`), then stop. Returns what is left."""
        left = self.client.flush(timeout_s)
        self._stop.set()
        self._thread.join()
        return left


def _settle_all(requests: list[_Request]) -> None:
    for request in requests:
        request.settle()


class KafkaPublisher:
    def __init__(self, kafka: KafkaSettings, api: ApiSettings, metrics: ApiMetrics) -> None:
        self.kafka, self.api, self.metrics = kafka, api, metrics
        self._producer: _Producer | None = None

    def _current(self) -> _Producer:
        producer = self._producer
        if producer is None or producer.failed is not None:
            if producer is not None:
                producer.abort(producer.failed or "failed")
            producer = self._producer = _Producer(self.kafka, self.api, asyncio.get_running_loop())
        return producer

    def _discard(self, producer: _Producer, reason: str) -> None:
        """Throw `producer` away without flushing it; the next request starts a new one."""
        if self._producer is producer:
            self._producer = None
        producer.abort(reason)

    async def publish(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[Ack]:
        """Send (key, value) records; return once the broker acknowledged all of them.

        Raises BrokerUnavailable otherwise, after throwing the producer away: none of the
        records is sent after that, but those already written to the broker may be stored.
        """
        producer = self._current()
        future = producer.loop.create_future()
        request = _Request(len(records), future)
        produce = producer.client.produce
        try:
            for i, (key, value) in enumerate(records):
                produce(topic, value, key, on_delivery=producer.callback(request, i))
            # librdkafka fails a record after message.timeout.ms; this bound only guards against a hang
            async with asyncio.timeout(self.api.publish_timeout_s + 5):
                acks = await future
        except (KafkaException, BufferError, BrokerUnavailable, TimeoutError) as e:
            self._discard(producer, f"publishing to {topic} failed: {e!r}")
            self.metrics.publish_failures.labels(topic).inc(len(records))
            log.warning("publishing %d record(s) to %s failed: %r", len(records), topic, e)
            raise BrokerUnavailable(str(e) or type(e).__name__) from e
        self.metrics.published.labels(topic).inc(len(records))
        return acks

    async def ready(self) -> bool:
        """True when the broker answers a metadata request now."""
        producer = self._current()
        try:
            await asyncio.to_thread(producer.client.list_topics, timeout=2)
        except KafkaException:
            return False
        return True

    async def close(self) -> None:
        """Flush what is pending (for at most the publish timeout), then let go."""
        producer, self._producer = self._producer, None
        if producer is not None:
            left = await asyncio.to_thread(producer.close, self.api.publish_timeout_s)
            if left:
                log.warning("%d record(s) still unacknowledged at shutdown", left)
