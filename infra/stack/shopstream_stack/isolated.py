"""Settings for a stack of its own: free ports, a given run directory, no .env file.

The tests and the benchmarks use it, so they never touch a developer's `.run/` or ports.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import psutil

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
# the ports handed out on this machine, by the process that took them (see `free_ports`)
CLAIMS = Path(tempfile.gettempdir()) / "shopstream-port-claims.json"


def ephemeral_low() -> int:
    """Where the kernel's ephemeral ports start (Linux's default when it cannot be read)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


@contextmanager
def _claims() -> Iterator[dict[int, int]]:
    """The ports handed out so far (port -> pid), read and written back under an exclusive lock;
    a process that has ended gives its ports back."""
    with CLAIMS.with_suffix(".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            claims = {int(port): pid for port, pid in json.loads(CLAIMS.read_text()).items()}
        except (OSError, ValueError):
            claims = {}
        alive = {pid for pid in set(claims.values()) if psutil.pid_exists(pid)}
        claims = {port: pid for port, pid in claims.items() if pid in alive}
        yield claims
        scratch = CLAIMS.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(claims))
        scratch.replace(CLAIMS)


def free_ports(n: int) -> list[int]:
    """n different ports free now, below the ephemeral range: a port from that range can be
    handed to any outgoing connection (once a Spark JVM's) before our server binds it.
    Every socket stays bound until all are chosen, so none repeats. And each port is claimed
    for this process until it ends (or `release_ports`): a stack binds its ports a while after
    choosing them (the dashboard's after Airflow's minute of start-up), and a port free until
    then was once chosen by another test process as well (CI: the chaos stack's dashboard
    port, taken by another stack's S3 server)."""
    high = ephemeral_low()
    with _claims() as claims, ExitStack() as bound:
        ports: list[int] = []
        for port in random.SystemRandom().sample(range(LOWEST_PORT, high), k=high - LOWEST_PORT):
            if port in claims:
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            bound.enter_context(s)
            ports.append(port)
            if len(ports) == n:
                claims.update(dict.fromkeys(ports, os.getpid()))
                return ports
    raise OSError(f"fewer than {n} free ports between {LOWEST_PORT} and {high}")


def release_ports(ports: Iterable[int]) -> None:
    """Give back ports this process took and no longer needs."""
    with _claims() as claims:
        for port in ports:
            if claims.get(port) == os.getpid():
                del claims[port]


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
