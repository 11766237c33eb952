"""What the dashboard's polling costs MongoDB: the server's CPU over a minute, with and without it.

Needs: MongoDB (`isolated_stack(SERVERS)`); the dashboard finds the other stores down, which
costs MongoDB nothing. Events arrive as the drain stores them at the generator's default pace
(about 100 events/s): a run every `BatchSettings.period_seconds` storing what came since, in
inserts of `batch_size`, on top of a `history` already stored. The dashboard is started and
left to load, then the server process's CPU time (psutil `cpu_times`, user + system) is taken
over one drain period with the dashboard polling, then over one with it stopped; the
difference is the polling's cost.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import psutil
from rich.console import Console

from shopstream.adapters.mongo import mongo_client
from shopstream.settings import Settings
from shopstream_batch.store import ensure_collections
from shopstream_stack.service import host_port

from .aggregation import _events
from .harness import Figure

SERVERS = ["mongo"]
console = Console()


def listening_process(port: int) -> psutil.Process:
    """The process listening on a TCP port."""
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(proc: psutil.Process) -> float:
    """The CPU time (user + system) a process has used so far."""
    t = proc.cpu_times()
    return t.user + t.system


def _drain_run(settings: Settings, n: int) -> None:
    """Store `n` events as one drain run does: in inserts of `batch_size`, each stamped when it is built."""
    client = mongo_client(settings.mongo)
    events = ensure_collections(client[settings.mongo.database], settings.batch).events
    size = settings.batch.batch_size
    for start in range(0, n, size):
        docs = _events(min(size, n - start), f"f-{uuid.uuid4().hex[:8]}")
        now = datetime.now(UTC)
        for d in docs:
            d["TimeStamp"] = d["StoredAt"] = now
        events.insert_many(docs, ordered=False)
    client.close()


def _window(settings: Settings, server: psutil.Process, rate: int, period: float) -> float:
    """MongoDB's CPU (share of a core) over one drain period that starts with a drain run."""
    c0, t0 = cpu_seconds(server), time.monotonic()
    _drain_run(settings, int(rate * period))
    time.sleep(max(0.0, period - (time.monotonic() - t0)))
    return (cpu_seconds(server) - c0) / (time.monotonic() - t0)


def _history(settings: Settings, n: int) -> None:
    client = mongo_client(settings.mongo)
    events = ensure_collections(client[settings.mongo.database], settings.batch).events
    then = datetime.now(UTC) - timedelta(hours=1)
    for start in range(0, n, 20_000):
        docs = _events(min(20_000, n - start), f"h{start}-{uuid.uuid4().hex[:6]}")
        for d in docs:
            d["TimeStamp"] = d["StoredAt"] = then
        events.insert_many(docs, ordered=False)
    client.close()


def _wait_up(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            sources = httpx.get(f"{url}/api/activity", timeout=30).json()["sources"]
            if sources[0]["state"] == "up":
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard did not read MongoDB within {timeout_s:.0f} s")
        time.sleep(1)


def run(settings: Settings, quick: bool = False, rate: int = 100, history: int = 100_000) -> list[Figure]:
    from shopstream_stack.apps import DashboardService

    period = settings.batch.period_seconds  # one drain run and the pause after it, quick or not
    server = listening_process(host_port(settings.mongo.uri, 27017)[1])
    console.print(
        f"[bold]dashboard polling[/bold]: MongoDB's CPU over a drain period ({period:.0f} s) "
        f"storing {rate} events/s, with and without the dashboard"
    )
    _history(settings, history)
    svc = DashboardService(settings)
    svc.start()
    try:
        _wait_up(settings.dashboard.base_url)
        time.sleep(2 * settings.dashboard.refresh_s)  # past the first look
        with_dash = _window(settings, server, rate, period)
    finally:
        svc.stop()
    alone = _window(settings, server, rate, period)
    share = with_dash - alone
    console.print(
        f"  MongoDB CPU: {with_dash:.1%} of a core with the dashboard polling, {alone:.1%} without: "
        f"the polling costs {share:.1%}"
    )
    return [
        Figure(
            f"MongoDB CPU caused by the dashboard's polling ({rate} events/s stored)",
            share * 100,
            "% of a core",
            limit_name="MongoDB CPU storing the events, no dashboard",
            limit_value=alone * 100,
            note=f"secantusd's user+system CPU over a drain period of {period:.0f} s ({rate * period:,.0f} events "
            f"stored at its start, as a drain run does) with the dashboard polling every "
            f"{settings.dashboard.refresh_s:.0f} s ({with_dash:.1%}), minus the same without it ({alone:.1%}); "
            f"{history:,} events stored before",
        )
    ]
