"""The Spark streaming job (`PurchasedItem` -> raw Parquet on S3) as a supervised service.

Healthy means more than alive: the job's status file (rewritten every second) says
its query runs and made progress lately. `invoke down` sends SIGTERM, on which the
job stops after its current batch; what it spawned (the JVM, Python workers) is
stopped with it.
"""

from __future__ import annotations

import sys

from shopstream.locations import output_url
from shopstream.streaming_status import read_status, status_path, unhealthy_reason

from .process import Proc
from .service import Endpoint, Service


class StreamingService(Service):
    name = "streaming"
    start_seconds = 10  # a JVM (or Airflow's imports) takes a while before it can fail

    def __init__(self, settings) -> None:
        super().__init__(settings)
        # JVM start, Python workers and a first batch (a backlog, after a pause) take a while
        self.timeout_s = max(self.timeout_s, 180.0)

    @property
    def address(self) -> str:
        return f"{self.settings.kafka.purchases_topic} -> {output_url(self.settings)}"

    def endpoints(self) -> list[Endpoint]:
        return []

    def procs(self) -> list[Proc]:
        argv = [sys.executable, "-m", "shopstream_streaming"]
        return [self._proc("spark", argv, env={**self.settings.to_env(), "TERM": "dumb"}, stop_family=True)]

    def problem(self) -> str | None:
        """Why the job is not healthy (None when it is)."""
        status = read_status(status_path(self.settings))
        if status is not None and status.get("pid") != self.procs()[0].pid():
            return "status file is from another process"
        return unhealthy_reason(status, self.settings)

    def healthy(self) -> bool:
        return self.problem() is None
