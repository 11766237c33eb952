"""Prometheus metrics the API exports at /metrics (HTTP request metrics come from the instrumentator).

One registry per app instance, so several apps (tests) never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.published = Counter(
            "shopstream_published_records", "Records acknowledged by Kafka", ["topic"], registry=registry
        )
        self.publish_failures = Counter(
            "shopstream_publish_failures", "Records Kafka did not acknowledge", ["topic"], registry=registry
        )
        self.rejected = Counter(
            "shopstream_rejected_requests", "Requests refused before publishing", ["reason"], registry=registry
        )
        self.broker_losses = Counter(
            "shopstream_broker_losses",
            "Checks that found acknowledged records the broker no longer holds",
            ["topic"],
            registry=registry,
        )
        self.republished = Counter(
            "shopstream_journal_republished_records",
            "Acknowledged records published again from the journal after the broker lost them",
            ["topic"],
            registry=registry,
        )
        self.journal_records = Gauge(
            "shopstream_journal_records",
            "Acknowledged records the journal still keeps (awaiting a read-back from the broker)",
            registry=registry,
        )
        self.journal_bytes = Gauge("shopstream_journal_bytes", "Size of the journal on disk", registry=registry)
