"""Prometheus metrics the API exports at /metrics (HTTP request metrics come from the instrumentator).

One registry per app instance, so several apps (tests) never clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.published = Counter("shopstream_published_records", "Records acknowledged by Kafka",
                                 ["topic"], registry=registry)
        self.publish_failures = Counter("shopstream_publish_failures", "Records Kafka did not acknowledge",
                                        ["topic"], registry=registry)
        self.rejected = Counter("shopstream_rejected_requests", "Requests refused before publishing",
                                ["reason"], registry=registry)
