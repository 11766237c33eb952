"""The librdkafka clients (confluent-kafka), built here as every other client is: the API's,
and the readers of the streaming job's Kafka source.

librdkafka batches, compresses, fetches and decodes in its own C threads: the API's event
loop only hands records over, its journal checks and the Spark source's tasks get records
ready to use. A module of its own, so that what does not need it does not load librdkafka.
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer

from shopstream.settings import KafkaSettings, bootstrap_servers


def rd_producer(cfg: KafkaSettings, **config: object) -> Producer:
    """A producer to the settings' broker; `config` are librdkafka properties (dots as in its docs)."""
    return Producer({"bootstrap.servers": cfg.bootstrap_servers, **config})


def rd_consumer(where: KafkaSettings | str, **config: object) -> Consumer:
    """A consumer of the settings' broker (or of a bootstrap string, in a Spark Python worker);
    `config` are librdkafka properties (dots as in its docs)."""
    return Consumer({"bootstrap.servers": bootstrap_servers(where), **config})
