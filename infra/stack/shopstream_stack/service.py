"""The shape every embedded server shares: start (idempotent), health, stop, status."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

from shopstream.restarts import by_service
from shopstream.settings import Settings

from .process import PortInUse, Proc, StackError, port_is_free, port_owner, tail, wait_until
from .supervision import Supervisor

PORT_GRACE_S = 5.0
FAILED_STARTS = 3  # a process that dies this often while `start` waits for it is broken


@dataclass(frozen=True)
class Endpoint:
    """A TCP port a server listens on, and the setting that chooses it."""

    proc: str  # name of the Proc that binds it
    host: str
    port: int
    setting: str


@dataclass(frozen=True)
class Status:
    name: str
    state: str  # healthy | unhealthy | restarting | stopped
    pids: list[int]
    address: str
    folder: Path
    restarts: int = 0  # starts by the supervisor nobody asked for, since the stack started


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:9092' or 'http://h:9000' or 'mongodb://h:27017/...' -> (host, port)."""
    parts = urlsplit(address if "//" in address else f"//{address.split(',')[0]}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


class Service(ABC):
    """One embedded server, made of one or more processes the stack's supervisord runs."""

    name: str
    start_seconds = 3  # a process up this long has started (dying sooner: retried after a backoff)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder: Path = settings.run_dir / self.name
        self.timeout_s = settings.embedded.start_timeout_s
        self.supervisor = Supervisor(settings)

    # -- what a concrete server defines ------------------------------------------
    @property
    @abstractmethod
    def address(self) -> str: ...

    @abstractmethod
    def endpoints(self) -> list[Endpoint]: ...

    @abstractmethod
    def procs(self) -> list[Proc]: ...

    @abstractmethod
    def healthy(self) -> bool:
        """A real protocol round trip (not just an open port)."""

    def prepare(self) -> str:
        """After the server is healthy: create topics, buckets, databases. Idempotent."""
        return ""

    def launch(self, proc: Proc) -> None:
        """Start one process; servers with set-up steps between processes override this."""
        proc.start()

    # -- shared behaviour ---------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_files(self) -> list[Path]:
        return [p.log_file for p in self.procs()]

    def running(self) -> bool:
        return any(p.alive() for p in self.procs())

    def start(self) -> str:
        """Start whatever is not running, wait until healthy, prepare. Returns a summary.

        From then on supervisord restarts a process of the service that dies; a start
        that fails here is stopped instead, and its logs' last lines say why.
        """
        procs = self.procs()
        if all(p.alive() for p in procs) and self._safe_healthy():
            return f"already running; {self.prepare()}".rstrip("; ")
        alive = {p.name for p in procs if p.alive()}
        for ep in self.endpoints():
            # a server that was just killed leaves its port unbindable for a moment (connections
            # it accepted are still closing): wait a little before calling the port taken
            if ep.proc not in alive and not wait_until(partial(port_is_free, ep.host, ep.port), PORT_GRACE_S, 0.1):
                raise PortInUse(self.name, ep.port, port_owner(ep.port), ep.setting)
        self.folder.mkdir(parents=True, exist_ok=True)
        if procs:
            self.supervisor.register(self.name, procs)
        exits = {p.name: self.supervisor.exits(p) for p in procs}
        for proc in procs:
            if not proc.alive():
                self.launch(proc)

        def failed() -> bool:
            """Given up on, or died at start again and again (once may be a kill, not a fault)."""
            return any(p.state() == "FATAL" or self.supervisor.exits(p) - exits[p.name] >= FAILED_STARTS for p in procs)

        if not wait_until(self.healthy, self.timeout_s, give_up=failed):
            why = "exited" if failed() else f"did not answer within {self.timeout_s:.0f} s"
            logs = "\n".join(f"--- {p.log_file}\n{tail(p.log_file, 15)}" for p in procs)
            logs += f"\n--- {self.supervisor.log}\n{self.supervisor.about(procs)}"
            self.stop()
            raise StackError(
                f"{self.name} {why}. Last lines of its logs:\n{logs}\n"
                f"Fix the cause above, then run `invoke up` again "
                f"(`invoke logs {self.name}` shows the whole log)."
            )
        return self.prepare()

    def stop(self) -> bool:
        """Stop every process, last started first. True if anything was running."""
        stopped = False
        for proc in reversed(self.procs()):
            stopped |= proc.stop(self.settings.embedded.stop_timeout_s)
        self.supervisor.release(self.name)
        return stopped

    def status(self) -> Status:
        procs = self.procs()
        pids = [pid for p in procs if (pid := p.pid()) is not None]
        if len(pids) == len(procs) and pids and self._safe_healthy():
            state = "healthy"
        elif any(p.state() in ("BACKOFF", "FATAL", "EXITED") for p in procs):
            state = "restarting"  # one died: supervisord (or its listener) starts it again
        elif pids:
            state = "unhealthy"
        else:
            state = "stopped"
        restarts = by_service(self.supervisor.restarts).get(self.name, {}).get("restarts", 0)
        return Status(self.name, state, pids, self.address, self.folder, restarts)

    def _safe_healthy(self) -> bool:
        try:
            return self.healthy()
        except Exception:  # noqa: BLE001 - a check that fails in any way means not healthy
            return False

    def _proc(self, name: str, argv: list[str], **kw) -> Proc:
        kw.setdefault("start_seconds", self.start_seconds)
        kw.setdefault("stop_timeout_s", self.settings.embedded.stop_timeout_s)
        return Proc(name=name, argv=argv, folder=self.folder, group=self.name, supervisor=self.supervisor, **kw)

    def _fail(self, what: str, proc: Proc) -> StackError:
        return StackError(f"{self.name}: {what}. Last lines of {proc.log_file}:\n{tail(proc.log_file, 15)}")
