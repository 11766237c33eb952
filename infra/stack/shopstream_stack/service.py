"""The shape every embedded server shares: start (idempotent), health, stop, status."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shopstream.settings import Settings

from .process import PortInUse, Proc, StackError, port_is_free, port_owner, tail, wait_until

PORT_GRACE_S = 5.0


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
    state: str  # healthy | starting/unhealthy | stopped
    pids: list[int]
    address: str
    folder: Path


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:9092' or 'http://h:9000' or 'mongodb://h:27017/...' -> (host, port)."""
    parts = urlsplit(address if "//" in address else f"//{address.split(',')[0]}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


class Service(ABC):
    """One embedded server, made of one or more supervised processes."""

    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder: Path = settings.run_dir / self.name
        self.timeout_s = settings.embedded.start_timeout_s

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
        """Start whatever is not running, wait until healthy, prepare. Returns a summary."""
        procs = self.procs()
        if all(p.alive() for p in procs) and self._safe_healthy():
            return f"already running; {self.prepare()}".rstrip("; ")
        alive = {p.name for p in procs if p.alive()}
        for ep in self.endpoints():
            # a server that was just killed leaves its port unbindable for a moment (connections
            # it accepted are still closing): wait a little before calling the port taken
            if ep.proc not in alive and not wait_until(lambda ep=ep: port_is_free(ep.host, ep.port), PORT_GRACE_S, 0.1):
                raise PortInUse(self.name, ep.port, port_owner(ep.port), ep.setting)
        self.folder.mkdir(parents=True, exist_ok=True)
        for proc in procs:
            if not proc.alive():
                self.launch(proc)
        dead = lambda: not all(p.alive() for p in procs)  # noqa: E731
        if not wait_until(self.healthy, self.timeout_s, give_up=dead):
            why = "exited" if dead() else f"did not answer within {self.timeout_s:.0f} s"
            logs = "\n".join(f"--- {p.log_file}\n{tail(p.log_file, 15)}" for p in procs)
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
        return stopped

    def status(self) -> Status:
        pids = [pid for p in self.procs() if (pid := p.pid()) is not None]
        if not pids:
            state = "stopped"
        elif len(pids) == len(self.procs()) and self._safe_healthy():
            state = "healthy"
        else:
            state = "unhealthy"
        return Status(self.name, state, pids, self.address, self.folder)

    def _safe_healthy(self) -> bool:
        try:
            return self.healthy()
        except Exception:
            return False

    def _proc(self, name: str, argv: list[str], **kw) -> Proc:
        return Proc(name=name, argv=argv, folder=self.folder, **kw)

    def _fail(self, what: str, proc: Proc) -> StackError:
        return StackError(f"{self.name}: {what}. Last lines of {proc.log_file}:\n{tail(proc.log_file, 15)}")
