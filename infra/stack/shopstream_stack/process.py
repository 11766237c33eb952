"""The stack's processes and what starting them needs: ports, logs, health waits.

Every embedded server is one or more `Proc`s: a command run in the foreground by the
stack's supervisord (`supervision`), its output in a log file inside the service's
folder of the run directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

if TYPE_CHECKING:
    from .supervision import Supervisor


class StackError(RuntimeError):
    """A problem the user can act on; the message says what to do."""


class PortInUse(StackError):
    def __init__(self, service: str, port: int, owner: str, setting: str) -> None:
        super().__init__(
            f"{service}: port {port} is already in use by {owner}. "
            f"Stop that process, or choose another port with {setting}."
        )
        self.port = port


def port_owner(port: int) -> str:
    """Describe who listens on a TCP port ("pid 123 (java)"), as precisely as we can."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return "another process (its PID is not visible to this user)"
                try:
                    name = psutil.Process(conn.pid).name()
                except psutil.Error:
                    name = "?"
                return f"pid {conn.pid} ({name})"
    except psutil.AccessDenied:
        pass
    return "another process"


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    check: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.2,
    give_up: Callable[[], bool] = lambda: False,
) -> bool:
    """Poll `check` until true; False on timeout or as soon as `give_up()` is true.

    An exception from `check` counts as "not yet" (a server still starting refuses
    connections).
    """

    def attempt() -> bool:
        try:
            return bool(check())
        except Exception:  # noqa: BLE001 - "not yet", as the docstring says
            return False

    deadline = stop_after_delay(timeout_s)
    retrying = Retrying(
        stop=lambda state: deadline(state) or give_up(),
        wait=wait_fixed(interval_s),
        retry=retry_if_result(lambda ok: not ok),
        retry_error_callback=lambda _state: False,
    )
    return retrying(attempt)


def inherited_env(drop_prefixes: tuple[str, ...] = ()) -> dict[str, str]:
    """This process's environment, less the variables whose names start with a prefix."""
    return {k: v for k, v in os.environ.items() if not (drop_prefixes and k.startswith(drop_prefixes))}


@dataclass
class Proc:
    """One long-running process of a service, run (and restarted) by the stack's supervisord."""

    name: str
    argv: list[str]
    folder: Path
    group: str  # the service it belongs to: its supervisord program group
    supervisor: Supervisor
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None  # run as this user (PostgreSQL refuses root)
    stop_signal: int = signal.SIGTERM
    # Also stop what the process spawned: its process group and its descendants, even those
    # that moved to a group of their own. The process alone gets the stop signal first, so
    # it can stop its children itself (the streaming job finishes its batch).
    stop_family: bool = False
    # Inherited variables with these prefixes are not passed on (`env` still is): a server
    # configured only by us, whatever the calling shell or test process exported.
    drop_env_prefixes: tuple[str, ...] = ()
    start_seconds: int = 3  # up this long counts as started; dying sooner means a retry after a backoff
    stop_timeout_s: float = 30.0  # then SIGKILL

    @property
    def program(self) -> str:
        return f"{self.group}-{self.name}"

    @property
    def qualified(self) -> str:
        return f"{self.group}:{self.program}"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.name}.log"

    def environment(self) -> dict[str, str]:
        return {**inherited_env(self.drop_env_prefixes), **self.env}

    def state(self) -> str:
        """supervisord's state name (RUNNING, BACKOFF, ...); UNKNOWN when it does not run this program."""
        info = self.supervisor.info(self)
        return info["statename"] if info else "UNKNOWN"

    def pid(self) -> int | None:
        info = self.supervisor.info(self)
        if not info or info["statename"] not in ("STARTING", "RUNNING", "STOPPING") or not info["pid"]:
            return None
        try:
            if psutil.Process(info["pid"]).status() == psutil.STATUS_ZOMBIE:
                return None  # killed, and supervisord has not noticed yet
        except psutil.Error:
            return None
        return info["pid"]

    def alive(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        self.supervisor.start(self)

    def stop(self, timeout_s: float) -> bool:
        """Stop through supervisord and wait. True if it was running.

        With `stop_family`, whatever of the process's family is left after it stopped gets
        SIGTERM, then SIGKILL.
        """
        pid = self.pid()
        family = self.family(psutil.Process(pid)) if self.stop_family and pid else []
        stopped = self.supervisor.stop(self)
        if self.stop_family and pid:
            self._stop_all(family + self.family(pid), timeout_s)
        return stopped

    @staticmethod
    def family(leader: psutil.Process | int) -> list[psutil.Process]:
        """The leader's descendants and every process in its process group (not the leader)."""
        pid = leader if isinstance(leader, int) else leader.pid
        found: dict[int, psutil.Process] = {}
        if isinstance(leader, psutil.Process):
            with contextlib.suppress(psutil.Error):
                found.update((c.pid, c) for c in leader.children(recursive=True))
        for proc in psutil.process_iter():
            try:
                if proc.pid != pid and os.getpgid(proc.pid) == pid:
                    found.setdefault(proc.pid, proc)
                    found.update((c.pid, c) for c in proc.children(recursive=True))
            except (OSError, psutil.Error):
                continue
        return list(found.values())

    @staticmethod
    def _stop_all(procs: list[psutil.Process], timeout_s: float) -> None:
        alive = []
        for proc in procs:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    proc.terminate()
                    alive.append(proc)
            except psutil.Error:
                continue
        _, alive = psutil.wait_procs(alive, timeout=min(timeout_s, 10))
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
