"""What `invoke setup/up/down/status/logs` do; tasks.py only forwards to these."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.s3 import ensure_bucket
from shopstream.settings import REPO_ROOT, Settings, StackMode

from . import install
from .keys import ensure_stack_keys
from .process import StackError, tail
from .service import Service
from .spark_cluster import SparkCluster, on_cluster
from .stack import SERVICE_TYPES, services
from .supervision import Supervisor

SERVER_NAMES = {cls.name for cls in SERVICE_TYPES}

# wide enough for the status table when output is not a terminal (CI logs, pipes)
console = Console(highlight=False, width=max(120, shutil.get_terminal_size((120, 24)).columns))
COMPOSE_FILE = REPO_ROOT / "infra" / "compose.yaml"


def say(msg: str) -> None:
    console.print(f"[bold]shopstream:[/bold] {msg}")


def setup(settings: Settings, for_tests: bool = False, for_bench: bool = False) -> None:
    install.ensure_system_packages(settings, for_tests=for_tests, for_bench=for_bench, say=say)
    install.ensure_spark_jars(settings, say=say)


def _compose(*args: str) -> None:
    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
    ):
        raise StackError("SHOPSTREAM_STACK=compose needs Docker with the compose plugin (`docker compose`)")
    # compose would read infra/.env; the settings read ./.env, so hand compose the same file
    env_file = Path(".env")
    extra = ["--env-file", str(env_file)] if env_file.exists() else []
    subprocess.run(["docker", "compose", *extra, "-f", str(COMPOSE_FILE), *args], check=True)


def up(settings: Settings, names: list[str] | None = None, spark_cluster: bool = False) -> None:
    """Start the stack; with `spark_cluster`, a Spark standalone cluster too, which the streaming
    job then runs on (`SHOPSTREAM_SPARK__MASTER` set to it for what this starts)."""
    setup(settings)
    embedded = settings.stack == StackMode.embedded
    if spark_cluster:
        if not embedded:
            raise StackError("--spark-cluster starts a cluster on this machine; it needs SHOPSTREAM_STACK=embedded")
        settings = on_cluster(settings)
        if names and SparkCluster.name not in names:
            names = [SparkCluster.name, *names]
    if not embedded:
        if settings.stack == StackMode.compose:
            _compose("up", "-d", "--wait")
        # compose's init containers create these too; for an external cluster this is the only place
        topics = ensure_topics(settings.kafka)
        ensure_bucket(settings.s3)
        say(f"using {settings.stack.value} servers; topics {topics}, bucket {settings.s3.bucket}")
    made = ensure_stack_keys(settings)  # before the API reads its key file and the clients theirs
    if made:
        say(f"created write keys {', '.join(made)} (plaintext in {settings.client_keys_dir}, mode 0600)")
    for svc in services(settings, names, apps=True, spark_cluster=spark_cluster):
        if not embedded and svc.name in SERVER_NAMES:
            continue
        t0 = time.monotonic()
        with console.status(f"starting {svc.name} ..."):
            summary = svc.start()
        say(f"{svc.name} up in {time.monotonic() - t0:.1f} s: {svc.address}" + (f"; {summary}" if summary else ""))
    status(settings)
    if spark_cluster:
        say(f"the streaming job runs on {settings.spark.master}; and `invoke analyze --spark-cluster` runs there")


# `invoke down` stops these together, one set after the other: first the load and the readers (an
# open dashboard connection holds up Airflow's API server), then what uses the servers (the API
# flushes its journal, the streaming job ends its batch, Airflow's tasks end), then the servers
STOP_ORDER = (
    ("generator", "dashboard"),
    ("api", "streaming", "airflow"),
    (SparkCluster.name, *(cls.name for cls in SERVICE_TYPES)),
)


def down(settings: Settings, wipe: bool = False) -> None:
    ours = {
        s.name: s
        for s in services(settings, apps=True, spark_cluster=True)
        if settings.stack == StackMode.embedded or s.name not in SERVER_NAMES
    }

    def stop(svc: Service) -> tuple[str, bool, float]:
        t0 = time.monotonic()
        return svc.name, svc.stop(), time.monotonic() - t0

    t0 = time.monotonic()
    for names in STOP_ORDER:
        batch = [ours[n] for n in names if n in ours]
        with ThreadPoolExecutor(max(1, len(batch))) as pool:
            for name, stopped, seconds in pool.map(stop, batch):
                if stopped:
                    say(f"stopped {name} in {seconds:.1f} s")
    Supervisor(settings).shutdown()
    say(f"everything stopped in {time.monotonic() - t0:.1f} s")
    if settings.stack == StackMode.compose:
        _compose("down", *(["--volumes"] if wipe else []))
    if wipe and settings.run_dir.exists():
        shutil.rmtree(settings.run_dir)
        say(f"removed {settings.run_dir}")


def service_states(settings: Settings) -> list[dict[str, Any]]:
    """Every service: its state, restarts, PIDs, address and folder (the last three only
    for what this project runs)."""
    rows: list[dict[str, Any]] = []
    for svc in services(settings, apps=True, spark_cluster=True):
        if settings.stack == StackMode.embedded or svc.name not in SERVER_NAMES:
            st = svc.status()
            if svc.name == SparkCluster.name and st.state == "stopped":
                continue  # it runs only when asked for (`invoke up --spark-cluster`)
            rows.append(
                {
                    "service": svc.name,
                    "state": st.state,
                    "restarts": st.restarts,
                    "pids": st.pids,
                    "address": svc.address,
                    "folder": _short(st.folder),
                }
            )
        else:
            rows.append(
                {
                    "service": svc.name,
                    "state": "healthy" if svc._safe_healthy() else "unreachable",
                    "restarts": None,
                    "pids": [],
                    "address": svc.address,
                    "folder": None,
                }
            )
    return rows


def status(settings: Settings, as_json: bool = False) -> bool:
    """Print a table of the services (or JSON, for scripts); True when every one is healthy."""
    rows = service_states(settings)
    all_ok = all(r["state"] == "healthy" for r in rows)
    if as_json:
        print(json.dumps({"stack": settings.stack.value, "healthy": all_ok, "services": rows}, indent=2))
        return all_ok
    table = Table(title=f"shopstream services ({settings.stack.value} stack)")
    for col in ("service", "state", "restarts", "pid", "address", "data and logs"):
        table.add_column(col, justify="right" if col == "restarts" else "left")
    for r in rows:
        colour = {"healthy": "green", "stopped": "dim", "restarting": "yellow"}.get(r["state"], "red")
        table.add_row(
            r["service"],
            f"[{colour}]{r['state']}[/{colour}]",
            "" if r["restarts"] is None else str(r["restarts"]),
            " ".join(map(str, r["pids"])),
            r["address"],
            r["folder"] or "",
        )
    console.print(table)
    return all_ok


def _short(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def logs(settings: Settings, name: str, lines: int = 50, follow: bool = False) -> None:
    (svc,) = services(settings, [name], apps=True, spark_cluster=True)
    files: list[Path] = svc.log_files
    if follow:
        subprocess.run(["tail", "-n", str(lines), "-F", *map(str, files)])
        return
    for f in files:
        console.rule(str(f))
        console.print(tail(f, lines), markup=False)


def chaos(settings: Settings, minutes: float = 10.0, seed: int | None = None, outage: str | None = None) -> int:
    """Start what is not running, inject faults under load (or one outage), wait for the
    catch-up, audit. Returns the exit code."""
    from . import chaos as chaos_run

    if settings.stack != StackMode.embedded:
        raise StackError("invoke chaos kills the embedded stack's processes; it needs SHOPSTREAM_STACK=embedded")
    if outage and outage not in chaos_run.TARGETS:
        raise StackError(f"--outage takes one of {', '.join(chaos_run.TARGETS)}; not {outage!r}")
    up(settings)
    svcs = {s.name: s for s in services(settings, apps=True)}
    if outage:
        report = chaos_run.run_outage(settings, svcs, outage, minutes, say)
    else:
        seed = seed if seed is not None else random.randrange(10**6)
        say(f"chaos for {minutes:g} min, seed {seed} (`invoke chaos --seed {seed}` injects the same faults)")
        report = chaos_run.run(settings, svcs, minutes, seed, say)
    _chaos_tables(report)
    svcs["generator"].start()
    say("the generator runs again")
    return report.exit_code


def _chaos_tables(report) -> None:
    if report.outage:
        o = report.outage
        lags = Table(title=f"{o.service} down for {o.minutes:g} min under load")
        for col in ("stage", "back to its normal lag after the outage"):
            lags.add_column(col)
        lags.add_row(o.service, f"started (healthy) in {o.back_s:.1f} s")
        for stage, secs in o.normal_s.items():
            lags.add_row(stage, f"{secs:.0f} s" if secs is not None else "[red]not within the timeout[/red]")
        console.print(lags)
    faults = Table(title=f"faults injected (seed {report.seed})")
    for col in ("at", "service", "process", "signal", "healthy again after"):
        faults.add_column(col, justify="right" if col in ("at", "healthy again after") else "left")
    for f in report.faults:
        back = f"{f.recovered_s:.1f} s" if f.recovered_s is not None else "[red]not within the timeout[/red]"
        sig = f.signal + (f", SIGKILL {f.killed_after_s:.0f} s later" if f.killed_after_s else "")
        faults.add_row(f"{f.at_s:.0f} s", f.service, f.process, sig, back)
    if report.faults:
        console.print(faults)
    audit = Table(title="after the catch-up: the audit")
    for col in ("stage", "acknowledged", "found", "missing", "doubled", "pending"):
        audit.add_column(col, justify="left" if col == "stage" else "right")
    for st in report.audit.get("stages", ()):
        audit.add_row(
            st["name"],
            *(
                f"{st[k]:,}" if st[k] is not None else "—"
                for k in ("acknowledged", "found", "missing", "doubled", "pending")
            ),
        )
    console.print(audit)
    caught = f"{report.caught_up_s:.0f} s" if report.caught_up_s is not None else "[red]not within the timeout[/red]"
    verdict = "[green]nothing lost, nothing doubled[/green]" if report.exit_code == 0 else "[red]failed[/red]"
    say(
        f"{len(report.faults)} faults; records accepted during the run: {report.accepted:,}; "
        f"missing {report.audit.get('missing', '?')}, doubled {report.audit.get('doubled', '?')}; "
        f"caught up {caught} after the load stopped: {verdict}"
    )


def run_component(settings: Settings, module: str, *args: str) -> int:
    """A component's own entry point (`python -m <module> ARGS`) in a process of its own, with
    these settings: the stack runs components, it never imports them. Its exit code."""
    return subprocess.run([sys.executable, "-m", module, *args], env={**os.environ, **settings.to_env()}).returncode


def batch_check(settings: Settings) -> bool:
    """Print how MongoDB's stored events and counts compare with the UserEvents topic."""
    return run_component(settings, "shopstream_batch", "check") == 0


def sessions(settings: Settings, days: int = 7) -> int:
    """Print the daily session metrics and product engagement; the exit code."""
    return run_component(settings, "shopstream_batch", "sessions", "--days", str(days))


def analyze(settings: Settings, as_of: str | None = None, spark_cluster: bool = False) -> int:
    """Execute the notebooks against the stack and write their reports (on the embedded Spark
    cluster with `spark_cluster`); the exit code."""
    if spark_cluster:
        cluster = SparkCluster(settings)
        if not cluster._safe_healthy():
            raise StackError(f"no Spark cluster answers at {cluster.address}; start it: `invoke up --spark-cluster`")
        settings = on_cluster(settings)
    return run_component(settings, "shopstream_analysis", *(["--as-of", as_of] if as_of else []))


def screenshot(settings: Settings, out: str = "docs/dashboard.png", timeout_s: float = 120) -> Path:
    """A full-page PNG of the running dashboard, taken once every panel has drawn its data."""
    import httpx

    from .browser import chromium_page

    url = f"{settings.dashboard.base_url}/"
    try:
        httpx.get(f"{settings.dashboard.base_url}/healthz", timeout=5).raise_for_status()
    except httpx.HTTPError as e:
        raise StackError(f"the dashboard does not answer at {url} ({e}): start it with `invoke up`") from None
    path = (REPO_ROOT / out) if not Path(out).is_absolute() else Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        page.goto(url)
        for chart in ("chart-events", "chart-purchases", "chart-funnel", "chart-top-revenue", "chart-payments"):
            page.wait_for_selector(f"#{chart} .main-svg", timeout=timeout_s * 1000)
        page.wait_for_selector("#services .badge", timeout=timeout_s * 1000)
        repeat_buyer = page.locator("#repeat-buyers tbody tr[data-user]")
        if repeat_buyer.count():  # look one up (before `invoke analyze` there are none to show)
            user = repeat_buyer.first.get_attribute("data-user")
            assert user is not None  # the selector picks rows that have it
            page.fill("#user-id", user)
            page.click("#user-form [type=submit]")
        page.wait_for_timeout(11_000)  # two more refreshes: the API chart has points to draw
        page.screenshot(path=str(path), full_page=True)
    say(f"screenshot: {_short(path)}")
    return path
