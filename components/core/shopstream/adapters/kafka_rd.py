"""The API's Kafka producer (confluent-kafka, on librdkafka), built here as every other client is.

librdkafka batches, compresses and talks to the broker in its own C threads: the API's
event loop only hands records over. A module of its own, so that what does not publish
does not load librdkafka.
"""

from __future__ import annotations

from confluent_kafka import Producer

from shopstream.settings import KafkaSettings


def rd_producer(cfg: KafkaSettings, **config: object) -> Producer:
    """A producer to the settings' broker; `config` are librdkafka properties (dots as in its docs)."""
    return Producer({"bootstrap.servers": cfg.bootstrap_servers, **config})
