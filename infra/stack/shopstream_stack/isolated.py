"""Settings for a stack of its own: free ports, a given run directory, no .env file.

The tests and the benchmarks use it, so they never touch a developer's `.run/` or ports.
"""

from __future__ import annotations

import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_settings(run_dir: Path, **overrides) -> Settings:
    fields: dict[str, Any] = dict(
        run_dir=run_dir,
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"),
        mongo=MongoSettings(uri=f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"),
        postgres=PostgresSettings(port=free_port()),
        s3=S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}"),
        embedded=EmbeddedSettings(**{f: free_port() for f in EmbeddedSettings.model_fields if f.endswith("_port")}),
        api=ApiSettings(port=free_port()),
        dashboard=DashboardSettings(port=free_port()),
        airflow=AirflowSettings(port=free_port()),
    )
    fields.update(overrides)
    return Settings(_env_file=None, **fields)
