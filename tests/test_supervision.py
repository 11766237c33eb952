"""The stack's supervisor: a process that dies comes back by itself, counted, and `down` leaves nothing.

Real supervisord, real servers, on stacks of their own (free ports, a temp run directory).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from conftest import invoke_status, make_settings
from shopstream.settings import EmbeddedSettings
from shopstream_stack.kafka import KafkaBroker
from shopstream_stack.process import Proc
from shopstream_stack.service import Endpoint, Service
from test_faults import wait_for

pytestmark = pytest.mark.services


class Flaky(Service):
    """One process that runs while its folder holds no file named `broken`, and exits 3 at start when it does."""

    name = "flaky"

    @property
    def address(self) -> str:
        return ""

    def endpoints(self) -> list[Endpoint]:
        return []

    def procs(self) -> list[Proc]:
        return [self._proc("worker", ["sh", "-c", "[ -e broken ] && exit 3; exec sleep 600"])]

    def healthy(self) -> bool:
        return all(p.alive() for p in self.procs())


def restarted(svc: Service, old_pid: int) -> bool:
    st = svc.status()
    return st.state == "healthy" and old_pid not in st.pids


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_server_that_dies_is_restarted_and_its_restarts_are_shown(tmp_path, sig):
    settings = make_settings(tmp_path / "run")
    broker = KafkaBroker(settings)
    broker.start()
    try:
        for n in (1, 2):
            pid = broker.procs()[0].pid()
            os.kill(pid, sig)
            wait_for("the broker to be back", lambda pid=pid: restarted(broker, pid), 60)
            # the listener counts the restart as supervisord reports it, which may come a moment later
            wait_for(f"restart {n} counted", lambda n=n: broker.status().restarts == n, 30)
        _, states = invoke_status(settings)
        assert (states["kafka"]["state"], states["kafka"]["restarts"]) == ("healthy", 2), states["kafka"]
    finally:
        broker.stop()
    assert broker.status().state == "stopped"


def test_a_process_that_keeps_failing_is_given_up_on_then_started_again_until_it_runs(tmp_path):
    """Backoff, then FATAL after `start_retries`; the listener starts it again every `rescue_after_s`."""
    settings = make_settings(tmp_path / "run", embedded=EmbeddedSettings(start_retries=1, rescue_after_s=2.0))
    svc = Flaky(settings)
    svc.start()
    try:
        proc = svc.procs()[0]
        (svc.folder / "broken").touch()
        os.kill(proc.pid(), signal.SIGKILL)
        wait_for("the supervisor to give up", lambda: proc.state() == "FATAL", 60)
        assert svc.status().state == "restarting"
        # the restart after the kill and its retry after a backoff (the listener counts them soon after)
        wait_for("both failed starts counted", lambda: svc.status().restarts >= 2, 30)
        failed_tries = svc.status().restarts
        wait_for("a rescue attempt", lambda: svc.status().restarts > failed_tries, 60)
        (svc.folder / "broken").unlink()
        wait_for("it to run again", lambda: svc.status().state == "healthy", 60)
    finally:
        svc.stop()


def test_stop_leaves_neither_the_processes_nor_the_supervisor(tmp_path):
    settings = make_settings(tmp_path / "run")
    broker = KafkaBroker(settings)
    broker.start()
    daemon = int(Path(broker.supervisor.pid_file).read_text())
    pid = broker.procs()[0].pid()
    assert broker.stop() is True
    wait_for("supervisord to exit", lambda: not psutil.pid_exists(daemon), 30)
    assert not psutil.pid_exists(pid)
    assert not broker.supervisor.running() and broker.status().state == "stopped"
    broker.start()  # a new supervisord, restarts counted from 0
    try:
        assert broker.status().restarts == 0 and broker.status().state == "healthy"
    finally:
        broker.stop()
