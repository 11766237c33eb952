"""The pipeline's own long-running components, supervised like the servers.

They run from this virtual environment with the settings handed down as
SHOPSTREAM_* variables, so a child sees exactly what `invoke up` saw.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx

from shopstream.adapters.api import api_client, api_health

from .keys import client_key_env
from .process import Proc
from .service import Endpoint, Service

BIN = Path(sys.executable).parent


class UvicornApp(Service):
    """A FastAPI app of ours under uvicorn, healthy when `health_path` answers 200."""

    factory = ""  # module:function returning the app
    health_path = "/healthz"

    @property
    def listen(self):  # the settings group with host, port and base_url
        return getattr(self.settings, self.name)

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("uvicorn", self.listen.host, self.listen.port, f"SHOPSTREAM_{self.name.upper()}__PORT")]

    def procs(self) -> list[Proc]:
        argv = [
            str(BIN / "uvicorn"),
            "--factory",
            self.factory,
            "--host",
            self.listen.host,
            "--port",
            str(self.listen.port),
            "--no-access-log",
        ]
        return [self._proc("uvicorn", argv, env=self.settings.to_env())]

    def healthy(self) -> bool:
        return httpx.get(f"{self.listen.base_url}{self.health_path}", timeout=2).status_code == 200


class ApiService(UvicornApp):
    """The ingestion API under uvicorn with `api.workers` worker processes.

    The workers share one Prometheus multiprocess folder (`PROMETHEUS_MULTIPROC_DIR`, emptied
    at each start), so /metrics, whichever worker answers, sums them all.
    """

    name = "api"
    factory = "shopstream_api.main:create_app"

    @property
    def metrics_dir(self) -> Path:
        return self.folder / "metrics"

    def procs(self) -> list[Proc]:
        (proc,) = super().procs()
        api = self.settings.api
        proc.argv += ["--workers", str(api.workers), "--forwarded-allow-ips", ",".join(map(str, api.trusted_proxies))]
        proc.env = {**proc.env, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        return [proc]

    def launch(self, proc: Proc) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # counts start from zero with the API
        self.metrics_dir.mkdir(parents=True)
        proc.start()

    def healthy(self) -> bool:
        with api_client(self.settings.api, timeout_s=2) as client:
            api_health(client)  # raises when not ready
        return True

    @property
    def address(self) -> str:
        return f"{self.settings.api.base_url}/docs"


class GeneratorService(Service):
    name = "generator"

    @property
    def address(self) -> str:
        return f"-> {self.settings.api.base_url} ({self.settings.generator.sessions_per_second} sessions/s)"

    def endpoints(self) -> list[Endpoint]:
        return []

    def procs(self) -> list[Proc]:
        gen = self.settings.generator
        argv = [
            str(BIN / "shopstream-generate"),
            "--api-url",
            self.settings.api.base_url,
            "--sessions-per-second",
            str(gen.sessions_per_second),
        ]
        if gen.seed is not None:
            argv += ["--seed", str(gen.seed)]
        env = {**self.settings.to_env(), **client_key_env(self.settings, "generator"), "TERM": "dumb"}
        return [self._proc("generator", argv, env=env)]

    def healthy(self) -> bool:
        return all(p.alive() for p in self.procs())


class DashboardService(UvicornApp):
    name = "dashboard"
    factory = "shopstream_dashboard.main:create_app"

    def procs(self) -> list[Proc]:
        (proc,) = super().procs()
        proc.env = {**proc.env, **client_key_env(self.settings, "replay")}  # for the replay it runs
        return [proc]

    @property
    def address(self) -> str:
        return f"{self.settings.dashboard.base_url}/"
