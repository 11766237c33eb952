"""`invoke chaos`: kill the stack's processes at random under load, then prove nothing was lost.

With `--outage SERVICE` it stops that one service for the given minutes instead, starts
it again, and measures how long each stage takes to be back to its normal lag while the
load goes on (`Lag`), before the same catch-up and audit.

For the given minutes, one fault after another: a random process of a random service
(`TARGETS`) gets SIGKILL (a crash, the OOM killer) or SIGTERM (an orchestrator's stop:
like `docker stop`, SIGKILL follows when the process has not exited within the stack's
stop timeout), and the stack's supervisor brings it back; the time until the service answers healthy
again is what each fault costs. Then the load stops, and the audit (run as a process,
`python -m shopstream_audit --json`) is repeated until no stage has anything pending:
that wait is how long the pipeline took to catch up. The last audit's missing and
doubled records decide the exit code.
"""

from __future__ import annotations

import contextlib
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
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from shopstream import ledger
from shopstream.adapters.kafka import end_offsets, group_committed
from shopstream.settings import Settings
from shopstream.streaming_status import purchases_read, read_status, status_path

from .process import tail, wait_until
from .service import Service

# service -> the processes a fault may hit (Airflow: its scheduler, which runs the DAG)
TARGETS: dict[str, tuple[str, ...]] = {
    "kafka": ("broker",),
    "mongo": ("server",),
    "s3": ("server",),
    "postgres": ("server",),
    "api": ("uvicorn",),
    "streaming": ("spark",),
    "airflow": ("scheduler",),
    "dashboard": ("uvicorn",),
}
SIGNALS = (signal.SIGKILL, signal.SIGTERM)
GAP_S = (5.0, 20.0)  # pause between one fault's recovery and the next fault
RECOVER_TIMEOUT_S = 180.0
STREAMING_NORMAL_LAG_S = 60.0  # the job writes a record within seconds (one trigger, 5 s)
STORES = ("kafka", "mongo", "s3", "postgres")
AUDIT_EVERY_S = 20.0


@dataclass
class Fault:
    at_s: float  # since the chaos began
    service: str
    process: str
    signal: str
    pid: int
    recovered_s: float | None = None  # None: not healthy again within RECOVER_TIMEOUT_S
    killed_after_s: float | None = None  # a SIGTERM the process outlived: SIGKILL this long after it


@dataclass
class ChaosReport:
    seed: int
    minutes: float
    faults: list[Fault] = field(default_factory=list)
    accepted: int = 0  # records the API acknowledged during the run
    caught_up_s: float | None = None  # after the load stopped; None: not within the timeout
    audit: dict[str, Any] = field(default_factory=dict)  # the last audit's summary
    outage: OutageReport | None = None  # with --outage, instead of faults

    @property
    def exit_code(self) -> int:
        if self.audit.get("missing") or self.audit.get("doubled"):
            return 1
        if self.caught_up_s is None or any(f.recovered_s is None for f in self.faults):
            return 1
        if self.outage and None in self.outage.normal_s.values():
            return 1
        return int(self.audit.get("exit_code", 2))


@dataclass
class Lag:
    """How far each stage is behind its topic, in records and in seconds of the topic's current rate."""

    batch: int
    streaming: int | None  # None: the job's status does not say
    rate: dict[str, float]  # records per second arriving, per topic

    def seconds(self, stage: str) -> float | None:
        topic_lag = self.batch if stage == "batch" else self.streaming
        rate = self.rate["batch" if stage == "batch" else "streaming"]
        return None if topic_lag is None else topic_lag / rate if rate > 0 else 0.0


class LagProbe:
    """Reads the topics' ends and the stages' positions; rates from the previous reading."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last: tuple[float, int, int] | None = None

    def read(self) -> Lag:
        k = self.settings.kafka
        ends_e = sum(end_offsets(k, k.user_events_topic).values())
        ends_p = sum(end_offsets(k, k.purchases_topic).values())
        done_e = sum(group_committed(k, self.settings.batch.consumer_group, k.user_events_topic).values())
        done_p = purchases_read(read_status(status_path(self.settings)), k.purchases_topic)
        now = time.monotonic()
        rate = {"batch": 0.0, "streaming": 0.0}
        if self.last:
            t, e, p = self.last
            rate = {"batch": (ends_e - e) / (now - t), "streaming": (ends_p - p) / (now - t)}
        self.last = (now, ends_e, ends_p)
        streaming = ends_p - done_p if done_p is not None else None
        return Lag(ends_e - done_e, streaming, rate)


@dataclass
class OutageReport:
    service: str
    minutes: float
    back_s: float = 0.0  # the service's own start, once the outage was over
    normal_s: dict[str, float | None] = field(default_factory=dict)  # stage -> back to normal lag after


def outage(
    settings: Settings,
    svc: Service,
    minutes: float,
    say: Callable[[str], None],
    normal_s: dict[str, float],
    timeout_s: float = 1200.0,
) -> OutageReport:
    """Stop one service for `minutes` under the running load, start it again, and wait until
    each stage's lag (in seconds of arrivals) is below its normal bound (`normal_s`)."""
    report = OutageReport(svc.name, minutes)
    say(f"stopping {svc.name} for {minutes:g} min")
    svc.stop()
    time.sleep(minutes * 60)
    t = time.monotonic()
    svc.start()
    report.back_s = round(time.monotonic() - t, 1)
    say(f"{svc.name} is back (started in {report.back_s} s); waiting for each stage's lag to be normal again")
    probe, over = LagProbe(settings), time.monotonic()
    probe.read()
    while len(report.normal_s) < len(normal_s) and time.monotonic() - over < timeout_s:
        time.sleep(10)
        lag = probe.read()
        for stage, bound in normal_s.items():
            behind = lag.seconds(stage)
            if stage not in report.normal_s and behind is not None and behind < bound:
                report.normal_s[stage] = round(time.monotonic() - over, 1)
                say(f"  {stage}: back to normal ({behind:.0f} s behind) {report.normal_s[stage]:.0f} s after")
        say(
            f"  {time.monotonic() - over:5.0f} s after: the batch {lag.batch:,} records behind, "
            f"the streaming job {lag.streaming if lag.streaming is not None else '?'}"
        )
    for stage in normal_s:
        report.normal_s.setdefault(stage, None)
    return report


def acknowledged_ids(settings: Settings) -> set[tuple[str, str]]:
    return {(a.topic, a.event_id) for a in ledger.acknowledged(settings)}


def run_audit(settings: Settings) -> dict[str, Any]:
    """One audit, as a separate process with the stack's settings; its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        subprocess.run(
            [sys.executable, "-m", "shopstream_audit", "--samples", "5", "--json", str(out)],
            env={**os.environ, **settings.to_env(), "TERM": "dumb"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=900,
        )
        try:
            return json.loads(out.read_text())
        except (OSError, ValueError):
            return {"exit_code": 2, "error": "the audit wrote no summary", "stages": []}


def pending(audit: dict[str, Any]) -> int:
    return sum(s.get("pending") or 0 for s in audit.get("stages", ()))


def inject(svc: Service, rng: random.Random, t0: float) -> Fault | None:
    """Signal one random process of the service; None if it is not running right now."""
    name = rng.choice(TARGETS[svc.name])
    proc = next(p for p in svc.procs() if p.name == name)
    sig = rng.choice(SIGNALS)
    pid = proc.pid()
    if pid is None:
        return None
    os.kill(pid, sig)
    return Fault(round(time.monotonic() - t0, 1), svc.name, proc.name, sig.name, pid)


def recovered(svc: Service, fault: Fault) -> bool:
    st = svc.status()
    return st.state == "healthy" and fault.pid not in st.pids


def escalate(fault: Fault, grace_s: float) -> None:
    """After a SIGTERM: SIGKILL once the grace period is over and the process still runs."""
    if fault.signal != "SIGTERM" or wait_until(lambda: not psutil.pid_exists(fault.pid), grace_s, 0.5):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(fault.pid, signal.SIGKILL)
        fault.killed_after_s = grace_s


def diagnose(svc: Service) -> str:
    """What a fault that did not heal left behind: supervisord's lines and the logs' tails."""
    procs = svc.procs()
    return "\n".join([svc.supervisor.about(procs), *(tail(p.log_file, 8) for p in procs)])


def run(
    settings: Settings,
    services: dict[str, Service],
    minutes: float,
    seed: int,
    say: Callable[[str], None],
    catch_up_timeout_s: float = 900.0,
) -> ChaosReport:
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
        escalate(fault, settings.embedded.stop_timeout_s)
        if wait_until(partial(recovered, svc, fault), RECOVER_TIMEOUT_S, 0.5):
            fault.recovered_s = round(time.monotonic() - hit, 1)
        killed = f" (SIGKILL after {fault.killed_after_s:.0f} s)" if fault.killed_after_s else ""
        say(
            f"{fault.at_s:6.1f} s  {fault.signal} {fault.service} ({fault.process}, pid {fault.pid}){killed}: "
            + (
                f"healthy again in {fault.recovered_s} s"
                if fault.recovered_s is not None
                else f"[red]not healthy within {RECOVER_TIMEOUT_S:.0f} s[/red]\n{diagnose(svc)}"
            )
        )
        # everything settles (a broker fault makes its clients reconnect) before the next fault
        wait_until(lambda: all(s.status().state == "healthy" for s in services.values()), RECOVER_TIMEOUT_S, 1.0)
        time.sleep(min(rng.uniform(*GAP_S), max(0.0, end - time.monotonic())))

    catch_up(settings, services["generator"], report, before, say, catch_up_timeout_s)
    return report


def run_outage(
    settings: Settings,
    services: dict[str, Service],
    name: str,
    minutes: float,
    say: Callable[[str], None],
    catch_up_timeout_s: float = 900.0,
) -> ChaosReport:
    """One service down for `minutes` under load; the stages' return to normal; the catch-up; the verdict."""
    report = ChaosReport(0, minutes)
    before = acknowledged_ids(settings)
    # a stage's normal lag, in seconds of arrivals: the batch's is below one DAG period
    normal = {"batch": settings.batch.period_seconds, "streaming": STREAMING_NORMAL_LAG_S}
    report.outage = outage(settings, services[name], minutes, say, normal)
    catch_up(settings, services["generator"], report, before, say, catch_up_timeout_s)
    return report


def catch_up(
    settings: Settings,
    generator: Service,
    report: ChaosReport,
    before: set[tuple[str, str]],
    say: Callable[[str], None],
    timeout_s: float,
) -> None:
    """Stop the load, then audit again and again until no stage has anything pending."""
    say("stopping the load (the generator) and waiting for every stage to catch up")
    generator.stop()
    report.accepted = len(acknowledged_ids(settings) - before)
    stopped = time.monotonic()
    while True:
        report.audit = run_audit(settings)
        waiting = pending(report.audit)
        if report.audit.get("exit_code") != 2 and waiting == 0 and not report.audit.get("missing"):
            report.caught_up_s = round(time.monotonic() - stopped, 1)
            return
        if time.monotonic() - stopped > timeout_s:
            return
        say(
            f"  {time.monotonic() - stopped:5.0f} s after the load stopped: {waiting:,} records pending"
            + (f", {report.audit['missing']:,} missing so far" if report.audit.get("missing") else "")
        )
        time.sleep(AUDIT_EVERY_S)
