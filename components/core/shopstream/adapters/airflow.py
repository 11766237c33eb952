"""Airflow's REST API (httpx): the client, and the one rule for Airflow's health.

`invoke status` (the stack's AirflowService) and the dashboard both ask
`/api/v2/monitor/health` and judge the answer here.
"""

from __future__ import annotations

import httpx

from shopstream.settings import AirflowSettings

REQUIRED = ("metadatabase", "scheduler")
# Someone else's Airflow (compose, a cluster) may run without a DAG processor or triggerer of its
# own (reported as null); the embedded stack runs all four, so there each must be healthy.
OWN = ("dag_processor", "triggerer")


def airflow_client(cfg: AirflowSettings, timeout_s: float) -> httpx.Client:
    """A client of Airflow's REST API, with the settings' token when there is one."""
    token = cfg.api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    return httpx.Client(base_url=cfg.base_url, headers=headers, timeout=timeout_s)


def unhealthy_components(health: dict, runs_all: bool) -> list[str]:
    """The components `/api/v2/monitor/health` does not report healthy. `runs_all`: a DAG processor
    and a triggerer must report too (the embedded stack runs them)."""

    def status(c: str) -> str | None:
        return (health.get(c) or {}).get("status")

    return [c for c in REQUIRED if status(c) != "healthy"] + [
        c for c in OWN if status(c) not in ("healthy", *(() if runs_all else (None,)))
    ]


def airflow_health(client: httpx.Client, runs_all: bool) -> str:
    """The API server answers and reports the database, scheduler (and, with `runs_all`, the DAG
    processor and triggerer) healthy, each heartbeating into the database; raises otherwise."""
    bad = unhealthy_components(client.get("/api/v2/monitor/health").raise_for_status().json(), runs_all)
    if bad:
        raise RuntimeError(f"unhealthy: {', '.join(bad)}")
    return "all components healthy"
