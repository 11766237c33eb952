"""The pipeline's own long-running components, supervised like the servers.

They run from this virtual environment with the settings handed down as
SHOPSTREAM_* variables, so a child sees exactly what `invoke up` saw.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from .process import Proc
from .service import Endpoint, Service

BIN = Path(sys.executable).parent


class ApiService(Service):
    name = "api"

    @property
    def address(self) -> str:
        return f"{self.settings.api.base_url}/docs"

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("uvicorn", self.settings.api.host, self.settings.api.port, "SHOPSTREAM_API__PORT")]

    def procs(self) -> list[Proc]:
        api = self.settings.api
        argv = [str(BIN / "uvicorn"), "--factory", "shopstream_api.main:create_app",
                "--host", api.host, "--port", str(api.port), "--no-access-log"]
        return [self._proc("uvicorn", argv, env=self.settings.to_env())]

    def healthy(self) -> bool:
        """Ready, not just alive: the API reaches the broker."""
        return httpx.get(f"{self.settings.api.base_url}/readyz", timeout=2).status_code == 200


class GeneratorService(Service):
    name = "generator"

    @property
    def address(self) -> str:
        return f"-> {self.settings.api.base_url} ({self.settings.generator.sessions_per_second} sessions/s)"

    def endpoints(self) -> list[Endpoint]:
        return []

    def procs(self) -> list[Proc]:
        gen = self.settings.generator
        argv = [str(BIN / "shopstream-generate"), "--api-url", self.settings.api.base_url,
                "--sessions-per-second", str(gen.sessions_per_second)]
        if gen.seed is not None:
            argv += ["--seed", str(gen.seed)]
        return [self._proc("generator", argv, env={**self.settings.to_env(), "TERM": "dumb"})]

    def healthy(self) -> bool:
        return all(p.alive() for p in self.procs())
