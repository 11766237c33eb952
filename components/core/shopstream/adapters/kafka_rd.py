"""The API's Kafka clients (confluent-kafka, on librdkafka), built here as every other client is.

librdkafka batches, compresses, fetches and decodes in its own C threads: the API's event
loop only hands records over, and its journal checks get records ready to compare. A module
of its own, so that what does not publish does not load librdkafka.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from shopstream.settings import KafkaSettings


def rd_producer(cfg: KafkaSettings, **config: object) -> Producer:
    """A producer to the settings' broker; `config` are librdkafka properties (dots as in its docs)."""
    return Producer({"bootstrap.servers": cfg.bootstrap_servers, **config})


def rd_consumer(cfg: KafkaSettings, **config: object) -> Consumer:
    """A consumer of the settings' broker; `config` are librdkafka properties (dots as in its docs)."""
    return Consumer({"bootstrap.servers": cfg.bootstrap_servers, **config})
