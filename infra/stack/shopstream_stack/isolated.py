"""Settings for a stack of its own: free ports, a given run directory, no .env file.

The tests and the benchmarks use it, so they never touch a developer's `.run/` or ports.
"""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from shopstream.settings import (
    AirflowSettings,
    ApiSettings,
    DashboardSettings,
    EmbeddedSettings,
    KafkaSettings,
    MongoSettings,
    PostgresSettings,
    S3Settings,
    Settings,
)


def free_ports(n: int) -> list[int]:
    """n different ports free now: every socket stays bound until all are chosen (ports
    taken one at a time can repeat, since a closed socket's port is free again at once)."""
    with ExitStack() as bound:
        socks = [bound.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_port() -> int:
    return free_ports(1)[0]


def isolated_settings(run_dir: Path, **overrides) -> Settings:
    embedded_ports = [f for f in EmbeddedSettings.model_fields if f.endswith("_port")]
    kafka, mongo, postgres, s3, api, dashboard, airflow, *embedded = free_ports(7 + len(embedded_ports))
    fields: dict[str, Any] = dict(
        run_dir=run_dir,
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{kafka}"),
        mongo=MongoSettings(uri=f"mongodb://127.0.0.1:{mongo}/?directConnection=true"),
        postgres=PostgresSettings(port=postgres),
        s3=S3Settings(endpoint_url=f"http://127.0.0.1:{s3}"),
        embedded=EmbeddedSettings(**dict(zip(embedded_ports, embedded, strict=True))),
        api=ApiSettings(port=api),
        dashboard=DashboardSettings(port=dashboard),
        airflow=AirflowSettings(port=airflow),
    )
    fields.update(overrides)
    return Settings(_env_file=None, **fields)
