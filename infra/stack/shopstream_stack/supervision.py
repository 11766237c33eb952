"""One supervisord per run directory runs every long-running process of the embedded stack.

supervisord (from PyPI) restarts a process that dies, with backoff when it dies again
while starting; `restart_listener` counts the restarts and brings back what supervisord
gave up on. Each service is a program group (`kafka`, `airflow`, ...) of programs named
`<service>-<process>`, registered when the service first starts: its config file in
`programs/`, and a spec per program for `launch` (argv, environment, folder, user).
Programs never start by themselves (`autostart=false`): `invoke up` starts the groups in
order, each once the one before is healthy.

The folder `<run_dir>/supervisor/` holds supervisord.conf, its log, the restarts file
and, when the run directory's path is short enough, the control socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import xmlrpc.client
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from supervisor.xmlrpc import Faults, SupervisorTransport

from shopstream.restarts import FILE as RESTARTS_FILE
from shopstream.restarts import read_restarts
from shopstream.settings import Settings

from .process import StackError, tail, wait_until

if TYPE_CHECKING:
    from .process import Proc

LIVE_STATES = {"STARTING", "RUNNING", "STOPPING"}  # the process exists
RETRYING_STATES = {"BACKOFF", "FATAL", "EXITED"}  # it died; supervisord (or the listener) starts it again
LISTENER = "restarts"
_SOCKET_MAX = 100  # sun_path holds 108 bytes


def _esc(value: str) -> str:
    """supervisord expands %(name)s in values: a literal % is %%."""
    return value.replace("%", "%%")


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.embedded = settings.embedded
        self.folder = settings.run_dir / "supervisor"
        self.conf = self.folder / "supervisord.conf"
        self.pid_file = self.folder / "supervisord.pid"
        self.log = self.folder / "supervisord.log"
        self.programs = self.folder / "programs"
        self.restarts = self.folder / RESTARTS_FILE
        sock = self.folder / "supervisor.sock"
        if len(str(sock)) > _SOCKET_MAX:  # a deep checkout: a short path outside it
            digest = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"shopstream-{digest}.sock"
        self.socket = sock

    # -- the daemon ---------------------------------------------------------------
    def rpc(self) -> Any:
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def running(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            return self.rpc().getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure_running(self) -> None:
        """Start supervisord (it daemonizes itself) unless it runs; a new one counts restarts from 0."""
        if self.running():
            return
        self.programs.mkdir(parents=True, exist_ok=True)
        self.restarts.unlink(missing_ok=True)
        self._write_conf()
        done = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not wait_until(self.running, 30):
            raise StackError(
                f"supervisord did not start: {(done.stderr or done.stdout).strip()[-2000:]} (see {self.log})"
            )

    def _write_conf(self) -> None:
        listener = shlex.join(
            [
                sys.executable,
                "-m",
                "shopstream_stack.restart_listener",
                str(self.restarts),
                str(self.embedded.rescue_after_s),
            ]
        )
        self.conf.write_text(f"""\
[unix_http_server]
file = {_esc(str(self.socket))}
chmod = 0700

[supervisord]
logfile = {_esc(str(self.log))}
logfile_maxbytes = 5MB
logfile_backups = 2
pidfile = {_esc(str(self.pid_file))}
directory = {_esc(str(self.folder))}
childlogdir = {_esc(str(self.folder))}
identifier = shopstream

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{_esc(str(self.socket))}

[eventlistener:{LISTENER}]
command = {_esc(listener)}
events = PROCESS_STATE
autorestart = true
stopsignal = KILL
stderr_logfile = {_esc(str(self.folder / "restart-listener.log"))}

[include]
files = {_esc(str(self.programs))}/*.conf
""")

    def shutdown(self, timeout_s: float = 30) -> bool:
        """Stop supervisord (it stops whatever still runs first). True if it was running."""
        if not self.running():
            return False
        pid = self._daemon_pid()
        try:
            # the listener first: left to supervisord's own shutdown it takes seconds to go
            self.rpc().stopProcessGroup(LISTENER, True)
            self.rpc().shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        if pid and not wait_until(lambda: not _exists(pid), timeout_s):
            os.kill(pid, signal.SIGKILL)
        return True

    def release(self, group: str) -> None:
        """After a service's deliberate stop: forget its group (so a process supervisord had
        given up on is not started again by the listener), and stop supervisord once no
        group is left (a test's stack, stopped service by service)."""
        if not self.running():
            return
        rpc = self.rpc()
        try:
            rpc.removeProcessGroup(group)
        except xmlrpc.client.Fault as e:
            if e.faultCode not in (Faults.BAD_NAME, Faults.STILL_RUNNING):
                raise
        if all(i["group"] == LISTENER for i in rpc.getAllProcessInfo()):
            self.shutdown()

    def _daemon_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    # -- programs -----------------------------------------------------------------
    def register(self, group: str, procs: list[Proc]) -> None:
        """Write the group's programs and make supervisord load them; a group whose config
        changed is replaced (only ever when none of its processes runs)."""
        self.ensure_running()
        sections = [f"[group:{group}]\nprograms = {','.join(p.program for p in procs)}\n"]
        for proc in procs:
            proc.folder.mkdir(parents=True, exist_ok=True)
            spec = proc.folder / f"{proc.name}.spec.json"
            spec.write_text(
                json.dumps({"argv": proc.argv, "env": proc.environment(), "cwd": str(proc.folder), "user": proc.user})
            )
            spec.chmod(0o600)  # the environment may hold credentials
            command = shlex.join([sys.executable, "-m", "shopstream_stack.launch", str(spec)])
            sections.append(f"""[program:{proc.program}]
command = {_esc(command)}
autostart = false
autorestart = true
startsecs = {proc.start_seconds}
startretries = {self.embedded.start_retries}
stopsignal = {signal.Signals(proc.stop_signal).name.removeprefix("SIG")}
stopwaitsecs = {proc.stop_timeout_s:.0f}
killasgroup = {str(proc.stop_family).lower()}
redirect_stderr = true
stdout_logfile = {_esc(str(proc.log_file))}
stdout_logfile_maxbytes = 20MB
stdout_logfile_backups = 2
""")
        (self.programs / f"{group}.conf").write_text("\n".join(sections))
        rpc = self.rpc()
        [[added, changed, _removed]] = rpc.reloadConfig()
        if group in changed:
            rpc.stopProcessGroup(group, True)
            rpc.removeProcessGroup(group)
        if group in added or group in changed:
            rpc.addProcessGroup(group)

    def exits(self, proc: Proc) -> int:
        """How often the program died without being asked to (at start or later), as the listener counted."""
        return int(read_restarts(self.restarts).get(proc.program, {}).get("exits", 0))

    def about(self, procs: list[Proc], lines: int = 6) -> str:
        """supervisord's last log lines about these programs (spawned, exited with status N, ...)."""
        names = tuple(f"'{p.program}'" for p in procs) + tuple(f" {p.program} " for p in procs)
        found = [line for line in tail(self.log, 400).splitlines() if any(n in line for n in names)]
        return "\n".join(found[-lines:])

    def info(self, proc: Proc) -> dict[str, Any] | None:
        """supervisord's view of one program (state, pid, ...); None if it does not know it."""
        if not self.socket.exists():
            return None
        try:
            return self.rpc().getProcessInfo(proc.qualified)
        except (OSError, xmlrpc.client.Error):
            return None

    def start(self, proc: Proc) -> None:
        try:
            self.rpc().startProcess(proc.qualified, False)
        except xmlrpc.client.Fault as e:
            if e.faultCode != Faults.ALREADY_STARTED:
                raise StackError(f"supervisord could not start {proc.program}: {e.faultString}") from None

    def stop(self, proc: Proc) -> bool:
        """Stop one program and wait (supervisord sends SIGKILL after its stopwaitsecs). True if it ran."""
        info = self.info(proc)
        if info is None or info["statename"] not in LIVE_STATES | RETRYING_STATES:
            return False
        try:
            self.rpc().stopProcess(proc.qualified, True)
        except xmlrpc.client.Fault as e:
            if e.faultCode != Faults.NOT_RUNNING:  # it died meanwhile: stopped now all the same
                raise
        return info["statename"] in LIVE_STATES


def _exists(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
