"""Publishing to Kafka with acknowledgement (aiokafka, acks=all, idempotent producer).

A request is answered only after the broker acknowledged every record it carries.
The producer starts lazily and restarts after a failure, so the API stays up
(and says 503) while the broker is away, and recovers when it is back.

A failure (no acknowledgement in time, or an error) throws the producer away without
flushing it: the idempotent producer would otherwise retry the records it still holds
for as long as the broker is away (aiokafka only gives up on a partition without a
known leader), and deliver them when the broker is back, though their requests were
answered 503. Whatever the producer had not yet written to the broker is dropped;
records it had written are in doubt (the broker may have stored them), hence the
advice to retry with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shopstream.adapters.kafka_async import aio_producer
from shopstream.settings import ApiSettings, KafkaSettings

from .metrics import ApiMetrics

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """Kafka did not acknowledge in time; the records may or may not have been stored."""


class ProducerReset(KafkaError):
    """The producer holding a record was thrown away after a failure, the record unsent
    (or, if it was already on the wire, unconfirmed)."""


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int


class _AbortableProducer(AIOKafkaProducer):
    """An AIOKafkaProducer that can be dropped at once, without the flush of `stop()`.

    `stop()` waits until every pending batch is delivered, which for an idempotent
    producer means until the broker is back. `abort()` instead fails every pending batch,
    stops the sender and cancels its produce requests, so that nothing it holds is
    written to a broker afterwards. It relies on aiokafka internals (checked on 0.14):
    the message accumulator (`fail_all`, `_closed`) and the sender (`sender_task`,
    `_send_produce_req`, which the sender routine starts as one task per node).
    """

    def __init__(self, **config) -> None:
        super().__init__(**config)
        self._aborted: KafkaError | None = None
        self._requests: set[asyncio.Task] = set()
        send_produce_req = self._sender._send_produce_req

        async def tracked(node_id, batches):  # one extra frame per produce request, not per record
            if self._aborted is not None:  # created just before the abort, not yet started
                return
            task = asyncio.current_task()
            self._requests.add(task)
            try:
                await send_produce_req(node_id, batches)
            finally:
                self._requests.discard(task)

        self._sender._send_produce_req = tracked

    def abort(self, error: KafkaError) -> None:
        """Fail everything pending with `error`, now, and write nothing more to a broker.

        Synchronous, so that when it returns no task of this producer can send a record
        any more; `aclose()` then releases the connections.
        """
        if self._aborted is not None:
            return
        self._aborted = error
        self._closed = True  # as after stop(): no "unclosed producer" warning, stop() is a no-op
        accumulator = self._message_accumulator
        accumulator._closed = True  # a send() still under way on this producer raises ProducerClosed
        sender_task = self._sender.sender_task
        if sender_task is not None:
            sender_task.cancel()  # takes effect before the sender routine drains another batch
        for task in list(self._requests):
            task.cancel()  # a request not yet written is never written; one on the wire is in doubt
        batches = [*(b for queue in accumulator._batches.values() for b in queue), *accumulator._pending_batches]
        accumulator.fail_all(error)  # every waiting send() learns now
        for batch in batches:  # nobody waits for the drain of a batch that will never be drained
            if batch._drain_waiter.done() and not batch._drain_waiter.cancelled():
                batch._drain_waiter.exception()

    async def aclose(self) -> None:
        """Release what an aborted producer holds (its sender, its connections)."""
        tasks = [t for t in (self._sender.sender_task, *self._requests) if t is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
                await self.client.close()


class KafkaPublisher:
    def __init__(self, kafka: KafkaSettings, api: ApiSettings, metrics: ApiMetrics) -> None:
        self.kafka, self.api, self.metrics = kafka, api, metrics
        self._producer: _AbortableProducer | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task] = set()  # aborted producers releasing their connections

    async def _started(self) -> _AbortableProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = aio_producer(
                    self.kafka,
                    _AbortableProducer,
                    client_id="shopstream-api",
                    acks="all",
                    enable_idempotence=True,  # broker-side retries never duplicate a record
                    linger_ms=self.api.linger_ms,
                    request_timeout_ms=int(self.api.publish_timeout_s * 1000),
                    compression_type="gzip",
                )
                try:
                    await producer.start()
                except BaseException as e:  # a KafkaError, or the caller's timeout
                    self._discard(producer, e)
                    if isinstance(e, KafkaError):
                        raise BrokerUnavailable(f"Kafka at {self.kafka.bootstrap_servers} is unreachable: {e}") from e
                    raise
                self._producer = producer
        return self._producer

    def _discard(self, producer: _AbortableProducer, reason: BaseException) -> None:
        """Throw `producer` away without flushing it; the next request starts a new one."""
        if self._producer is producer:
            self._producer = None
        if producer._aborted is not None:
            return
        producer.abort(ProducerReset(f"the producer was reset after a failure: {reason!r}"))
        task = asyncio.create_task(producer.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def publish(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[Ack]:
        """Send (key, value) records; return once the broker acknowledged all of them.

        Raises BrokerUnavailable otherwise, after throwing the producer away: none of the
        records is sent after that, but those already written to the broker may be stored.
        """
        producer, futures = None, []
        try:
            async with asyncio.timeout(self.api.publish_timeout_s):
                producer = await self._started()
                for key, value in records:
                    futures.append(await producer.send(topic, value=value, key=key))
                results = await asyncio.gather(*futures)
        except (KafkaError, TimeoutError, BrokerUnavailable) as e:
            if producer is not None:
                self._discard(producer, e)
            for future in futures:  # failed by the discard; retrieved, so asyncio does not log them
                if future.done() and not future.cancelled():
                    future.exception()
            self.metrics.publish_failures.labels(topic).inc(len(records))
            log.warning("publishing %d record(s) to %s failed: %r", len(records), topic, e)
            raise BrokerUnavailable(str(e) or type(e).__name__) from e
        self.metrics.published.labels(topic).inc(len(records))
        return [Ack(r.partition, r.offset) for r in results]

    async def ready(self) -> bool:
        """True when the broker answers a metadata request now."""
        try:
            async with asyncio.timeout(2):
                producer = await self._started()
                return bool(await producer.client.force_metadata_update())
        except (KafkaError, TimeoutError, BrokerUnavailable):
            return False

    async def close(self) -> None:
        """Flush what is pending (for at most the publish timeout), then let go."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                async with asyncio.timeout(self.api.publish_timeout_s):
                    await producer.stop()
            except (KafkaError, TimeoutError) as e:
                self._discard(producer, e)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
