"""`invoke chaos`: kill the stack's processes at random under load, then prove nothing was lost.

For the given minutes, one fault after another: a random process of a random service
(`TARGETS`) gets SIGKILL (a crash, the OOM killer) or SIGTERM (an orchestrator's stop),
and the stack's supervisor brings it back; the time until the service answers healthy
again is what each fault costs. Then the load stops, and the audit (run as a process,
`python -m shopstream_audit --json`) is repeated until no stage has anything pending:
that wait is how long the pipeline took to catch up. The last audit's missing and
doubled records decide the exit code.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopstream import ledger
from shopstream.settings import Settings

from .process import wait_until
from .service import Service

# service -> the processes a fault may hit (Airflow: its scheduler, which runs the DAG)
TARGETS: dict[str, tuple[str, ...]] = {
    "kafka": ("broker",), "mongo": ("server",), "s3": ("mon.a", "osd.0", "client.rgw.a"),
    "postgres": ("server",), "api": ("uvicorn",), "streaming": ("spark",), "airflow": ("scheduler",),
    "dashboard": ("uvicorn",),
}
SIGNALS = (signal.SIGKILL, signal.SIGTERM)
GAP_S = (5.0, 20.0)  # pause between one fault's recovery and the next fault
RECOVER_TIMEOUT_S = 180.0
AUDIT_EVERY_S = 20.0


@dataclass
class Fault:
    at_s: float  # since the chaos began
    service: str
    process: str
    signal: str
    pid: int
    recovered_s: float | None = None  # None: not healthy again within RECOVER_TIMEOUT_S


@dataclass
class ChaosReport:
    seed: int
    minutes: float
    faults: list[Fault] = field(default_factory=list)
    accepted: int = 0  # records the API acknowledged during the run
    caught_up_s: float | None = None  # after the load stopped; None: not within the timeout
    audit: dict[str, Any] = field(default_factory=dict)  # the last audit's summary

    @property
    def exit_code(self) -> int:
        if self.audit.get("missing") or self.audit.get("doubled"):
            return 1
        if self.caught_up_s is None or any(f.recovered_s is None for f in self.faults):
            return 1
        return int(self.audit.get("exit_code", 2))


def acknowledged_ids(settings: Settings) -> set[tuple[str, str]]:
    return {(a.topic, a.event_id) for a in ledger.acknowledged(settings)}


def run_audit(settings: Settings) -> dict[str, Any]:
    """One audit, as a separate process with the stack's settings; its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        subprocess.run([sys.executable, "-m", "shopstream_audit", "--samples", "5", "--json", str(out)],
                       env={**os.environ, **settings.to_env(), "TERM": "dumb"}, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=900)
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError):
            return {"exit_code": 2, "error": "the audit wrote no summary", "stages": []}


def pending(audit: dict[str, Any]) -> int:
    return sum(s.get("pending") or 0 for s in audit.get("stages", ()))


def inject(svc: Service, rng: random.Random, t0: float) -> Fault | None:
    """Signal one random process of the service; None if it is not running right now."""
    proc = next(p for p in svc.procs() if p.name == rng.choice(TARGETS[svc.name]))
    sig = rng.choice(SIGNALS)
    pid = proc.pid()
    if pid is None:
        return None
    os.kill(pid, sig)
    return Fault(round(time.monotonic() - t0, 1), svc.name, proc.name, sig.name, pid)


def recovered(svc: Service, fault: Fault) -> bool:
    st = svc.status()
    return st.state == "healthy" and fault.pid not in st.pids


def run(settings: Settings, services: dict[str, Service], minutes: float, seed: int,
        say: Callable[[str], None], catch_up_timeout_s: float = 900.0) -> ChaosReport:
    """The fault phase under the running generator, then the catch-up, then the verdict."""
    rng = random.Random(seed)
    report = ChaosReport(seed, minutes)
    before = acknowledged_ids(settings)
    t0 = time.monotonic()
    end = t0 + minutes * 60
    while time.monotonic() < end:
        svc = services[rng.choice(sorted(TARGETS))]
        fault = inject(svc, rng, t0)
        if fault is None:
            continue
        report.faults.append(fault)
        hit = time.monotonic()
        if wait_until(lambda svc=svc, fault=fault: recovered(svc, fault), RECOVER_TIMEOUT_S, 0.5):
            fault.recovered_s = round(time.monotonic() - hit, 1)
        say(f"{fault.at_s:6.1f} s  {fault.signal} {fault.service} ({fault.process}, pid {fault.pid}): "
            + (f"healthy again in {fault.recovered_s} s" if fault.recovered_s is not None
               else f"[red]not healthy within {RECOVER_TIMEOUT_S:.0f} s[/red]"))
        # everything settles (a broker fault makes its clients reconnect) before the next fault
        wait_until(lambda: all(s.status().state == "healthy" for s in services.values()), RECOVER_TIMEOUT_S, 1.0)
        time.sleep(min(rng.uniform(*GAP_S), max(0.0, end - time.monotonic())))

    say("faults done; stopping the load (the generator) and waiting for every stage to catch up")
    services["generator"].stop()
    report.accepted = len(acknowledged_ids(settings) - before)
    stopped = time.monotonic()
    while True:
        report.audit = run_audit(settings)
        waiting = pending(report.audit)
        if report.audit.get("exit_code") != 2 and waiting == 0 and not report.audit.get("missing"):
            report.caught_up_s = round(time.monotonic() - stopped, 1)
            break
        if time.monotonic() - stopped > catch_up_timeout_s:
            break
        say(f"  {time.monotonic() - stopped:5.0f} s after the load stopped: {waiting:,} records pending"
            + (f", {report.audit['missing']:,} missing so far" if report.audit.get("missing") else ""))
        time.sleep(AUDIT_EVERY_S)
    return report
