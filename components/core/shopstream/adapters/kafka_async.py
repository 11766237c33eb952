"""The API's asyncio Kafka clients (aiokafka), built here as every kafka-python one is in `kafka`.

A module of its own, so that what reads Kafka synchronously (the batch, Spark's Python
workers) does not import aiokafka.
"""

from __future__ import annotations

from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shopstream.settings import KafkaSettings

P = TypeVar("P", bound=AIOKafkaProducer)


def aio_producer(cfg: KafkaSettings, cls: type[P] = AIOKafkaProducer, **options) -> P:
    """A producer to the settings' broker; `cls` a subclass with more to it, `options` go to it."""
    return cls(bootstrap_servers=cfg.bootstrap_servers, **options)


def aio_consumer(cfg: KafkaSettings, **options) -> AIOKafkaConsumer:
    """A consumer of the settings' broker; `options` go to AIOKafkaConsumer."""
    return AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, **options)
