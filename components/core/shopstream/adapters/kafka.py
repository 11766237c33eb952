"""Kafka clients and idempotent topic creation (kafka-python)."""

from __future__ import annotations

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shopstream.settings import KafkaSettings


def admin_client(cfg: KafkaSettings, timeout_ms: int = 5000) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=cfg.bootstrap_servers,
        client_id="shopstream-admin",
        request_timeout_ms=timeout_ms,
    )


def ensure_topics(cfg: KafkaSettings) -> dict[str, int]:
    """Create the pipeline's topics if missing; return each topic's partition count.

    An existing topic is left as it is (its partition count may differ from the
    setting; we report it rather than silently changing it).
    """
    admin = admin_client(cfg)
    try:
        existing = set(admin.list_topics())
        missing = [t for t in cfg.topics if t not in existing]
        for topic in missing:
            try:
                admin.create_topics(
                    [NewTopic(topic, cfg.partitions, cfg.replication_factor)],
                    validate_only=False,
                )
            except TopicAlreadyExistsError:  # created concurrently by another caller
                pass
        described = admin.describe_topics(cfg.topics)
        return {d["name"]: len(d["partitions"]) for d in described}
    finally:
        admin.close()


def end_offsets(cfg: KafkaSettings, topic: str) -> dict[int, int]:
    """Each partition's next offset (where a new record would land); their sum is how many
    records the topic has received."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, client_id="shopstream-offsets")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()
    return {tp.partition: offset for tp, offset in sorted(ends.items())}
