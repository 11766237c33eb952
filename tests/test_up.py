"""`invoke up` runs the API and the generator; their records reach both topics."""

from __future__ import annotations

import json
import time

import pytest

from conftest import end_offsets, invoke, invoke_status, read_from
from shopstream_stack.apps import ApiService, GeneratorService

pytestmark = pytest.mark.services


def count_since(settings, topic: str, since: dict[int, int]) -> int:
    now = end_offsets(settings, topic)
    return sum(now[p] - since[p] for p in since)


def test_up_starts_api_and_generator_and_records_flow(stack, settings):
    topics = settings.kafka.topics
    before = {t: end_offsets(settings, t) for t in topics}
    up = invoke(settings, "up", "--only", "api", "--only", "generator")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        _, states = invoke_status(settings)
        for name in ("kafka", "mongo", "postgres", "s3", "api", "generator"):
            assert states[name]["state"] == "healthy", states
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = {t: count_since(settings, t, before[t]) for t in topics}
            if all(n > 0 for n in counts.values()):
                break
            time.sleep(1)
        assert all(n > 0 for n in counts.values()), counts
        # what arrived is what the API publishes: contract records with an EventId
        topic = settings.kafka.purchases_topic
        record = json.loads(read_from(settings, topic, before[topic])[0].value)
        assert {"EventId", "IngestedAt", "OrderId", "Products", "TotalPrice"} <= set(record)
    finally:
        for svc in (GeneratorService(settings), ApiService(settings)):
            svc.stop()
    assert "api" in invoke(settings, "logs", "api").stdout
