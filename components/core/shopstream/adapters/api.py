"""The ingestion API as other processes see it: the client, and the one rule for its health.

`invoke status` (the stack's ApiService) and the dashboard both ask here.
"""

from __future__ import annotations

import httpx

from shopstream.settings import ApiSettings

# Ready, not just alive: the API answers 200 here only while it reaches the broker
# (it answers /healthz as soon as it runs, and 503 to events while Kafka is gone).
READY_PATH = "/readyz"


def api_client(cfg: ApiSettings, timeout_s: float) -> httpx.Client:
    return httpx.Client(base_url=cfg.base_url, timeout=timeout_s)


def api_health(client: httpx.Client) -> str:
    """The API is ready to take events (raises when it is not, or does not answer)."""
    client.get(READY_PATH).raise_for_status()
    return "ready: reaches Kafka"
