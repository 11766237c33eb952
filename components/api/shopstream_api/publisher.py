"""Publishing to Kafka with acknowledgement (aiokafka, acks=all, idempotent producer).

A request is answered only after the broker acknowledged every record it carries.
The producer starts lazily and restarts after a failure, so the API stays up
(and says 503) while the broker is away, and recovers when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shopstream.settings import ApiSettings, KafkaSettings

from .metrics import ApiMetrics

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """Kafka did not acknowledge in time; the client should retry later."""


@dataclass(frozen=True)
class Ack:
    partition: int
    offset: int


class KafkaPublisher:
    def __init__(self, kafka: KafkaSettings, api: ApiSettings, metrics: ApiMetrics) -> None:
        self.kafka, self.api, self.metrics = kafka, api, metrics
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.kafka.bootstrap_servers,
                    client_id="shopstream-api",
                    acks="all",
                    enable_idempotence=True,  # broker-side retries never duplicate a record
                    linger_ms=self.api.linger_ms,
                    request_timeout_ms=int(self.api.publish_timeout_s * 1000),
                    compression_type="gzip",
                )
                try:
                    await producer.start()
                except KafkaError as e:
                    await producer.stop()
                    raise BrokerUnavailable(f"Kafka at {self.kafka.bootstrap_servers} is unreachable: {e}") from e
                self._producer = producer
        return self._producer

    async def publish(self, topic: str, records: list[tuple[bytes, bytes]]) -> list[Ack]:
        """Send (key, value) records; return once the broker acknowledged all of them."""
        try:
            async with asyncio.timeout(self.api.publish_timeout_s):
                producer = await self._started()
                futures = [await producer.send(topic, value=value, key=key) for key, value in records]
                results = await asyncio.gather(*futures)
        except (KafkaError, TimeoutError, BrokerUnavailable) as e:
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
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
