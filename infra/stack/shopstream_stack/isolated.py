"""Settings for a stack of its own: free ports, a given run directory, no .env file.

The tests and the benchmarks use it, so they never touch a developer's `.run/` or ports.
"""

from __future__ import annotations

import random
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

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 28_000  # above every default port of the stack (MongoDB's 27017 is the highest)


def ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (Linux's default when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_ports(n: int) -> list[int]:
    """n different ports free now, below the ephemeral range: a port from that range can be
    handed to any outgoing connection (once a Spark JVM's) before our server binds it.
    Every socket stays bound until all are chosen, so none repeats."""
    high = ephemeral_low()
    with ExitStack() as bound:
        ports: list[int] = []
        for port in random.SystemRandom().sample(range(LOWEST_PORT, high), k=high - LOWEST_PORT):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            bound.enter_context(s)
            ports.append(port)
            if len(ports) == n:
                return ports
    raise OSError(f"fewer than {n} free ports between {LOWEST_PORT} and {high}")


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
