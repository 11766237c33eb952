"""The dashboard on 1M purchases and on 1M, then 10M user events (target: each data call under
100 ms at p95, the read model's memory bounded, ready within seconds of a restart).

Needs: Kafka, MongoDB, PostgreSQL and S3 (`isolated_stack(SERVERS)`), Spark's s3a jars.

Not timed: 1M purchases written to the lake's output path by Spark (the analysis benchmark's
generator: the streaming job's schema, 50,000 customers, timestamps over 24 hours), user
events inserted into MongoDB as the drain stores them (the validator not asked again; spread
over the same 24 hours, the same customers; the 10M step adds 9M to the first 1M), 10,000 repeat-buyer rows in
PostgreSQL. At each size the dashboard is started as `invoke up` runs it (a uvicorn process)
and its read model reads what is new (reported: the first read at 1M, the 9M more at 10M).

Timed, at each size: each data call the page makes, over HTTP from this process, 5 warm-up
calls then `calls` timed ones; the figure is the p95. Limit, same run: the p95 of `/healthz`
(the HTTP round trip with no work behind it). The dashboard process's RSS (its most while
reading the stores, and after the calls). Then the dashboard is stopped and started again on
its read model file: the time from the start to an answer with every event and purchase
counted (the restart to ready; limit: the same start with an empty read model, the first read).
Last, what its polling costs MongoDB (`dashboard_polling`).
"""

from __future__ import annotations

import functools
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import httpx
import psutil
from rich.console import Console
from rich.progress import Progress

from shopstream.adapters.mongo import mongo_client
from shopstream.adapters.postgres import pg_engine
from shopstream.enrichment import enrichment_fields
from shopstream.locations import output_url
from shopstream.settings import Settings
from shopstream_analysis.warehouse import replace_repeat_buyers
from shopstream_batch.store import ensure_collections

from .aggregation import _events
from .analysis import AS_OF, CUSTOMERS, generate
from .api import envelope
from .dashboard_polling import listening_process
from .harness import Figure, percentile, spark_for

SERVERS = ["kafka", "mongo", "postgres", "s3"]
TARGET_MS = 100
console = Console()


@functools.cache
def _enrichment(user: int) -> dict:
    """A user's events' Enrichment, as the drain stores it: from the envelope of the generated
    visitor the benchmarks give that user, so the places and shares have a real spread."""
    e = envelope(user)
    return enrichment_fields(e["ClientIp"], e["UserAgent"])


def _fill_events(settings: Settings, start: int, n: int) -> None:
    """Events `start` to `n` (the ones before are there already)."""
    client = mongo_client(settings.mongo)
    colls = ensure_collections(client[settings.mongo.database], settings.batch)
    with Progress() as progress:
        task = progress.add_task(f"events {start:,} to {n:,} into MongoDB", total=n - start)
        for first in range(start, n, 20_000):
            docs = _events(min(20_000, n - first), f"d{first}-{uuid.uuid4().hex[:6]}")
            for i, d in enumerate(docs):
                user = (first + i) * 7 % CUSTOMERS
                d["UserId"] = f"user-{user}"
                d["Enrichment"] = _enrichment(user)
                d["TimeStamp"] = AS_OF - timedelta(seconds=(first + i) * 7919 % 86_400)
            # as the drain stores them: the contract validated them, the collection's validator is not asked again
            colls.events.insert_many(docs, ordered=False, bypass_document_validation=True)
            progress.advance(task, len(docs))
    client.close()


def _fill_repeat_buyers(settings: Settings, n: int) -> None:
    now = datetime.now(UTC)
    replace_repeat_buyers(
        pg_engine(settings.postgres),
        (
            {
                "UserId": f"user-{i}",
                "ProductId": f"sku-{i % 5000:05d}",
                "Orders": 2 + i % 3,
                "Units": 3 + i % 5,
                "FirstBought": now - timedelta(hours=2 + i % 20),
                "LastBought": now - timedelta(minutes=i % 600),
            }
            for i in range(n)
        ),
    )


def _wait_loaded(url: str, purchases: int, events: int, timeout_s: float, proc: list[psutil.Process]) -> float:
    """Seconds until the dashboard answers with every event and purchase counted; samples its RSS
    meanwhile into `proc`'s first element's `peak` (bytes)."""
    t0 = time.monotonic()
    while True:
        try:
            sources = {s["name"]: s for s in httpx.get(f"{url}/api/activity", timeout=60).json()["sources"]}
            sales = httpx.get(f"{url}/api/sales", timeout=60).json()
        except httpx.TransportError:  # not listening yet
            sources, sales = {}, {"purchases": 0}
        if proc:
            _Peak.sample(proc[0])
        elif sources:
            proc.append(listening_process(settings_port(url)))
        if (
            sales["purchases"] >= purchases
            and sources.get("mongodb", {}).get("state") == "up"
            and (sources["mongodb"]["detail"] or "").startswith(f"{events:,} events")
        ):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"read model not loaded after {timeout_s:.0f} s: {sources}, {sales['purchases']:,}")
        time.sleep(0.2)


class _Peak:
    """The most RSS seen per process."""

    seen: ClassVar[dict[int, int]] = {}

    @classmethod
    def sample(cls, proc: psutil.Process) -> int:
        rss = proc.memory_info().rss
        cls.seen[proc.pid] = max(cls.seen.get(proc.pid, 0), rss)
        return rss


def settings_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _time_calls(client: httpx.Client, path: str, calls: int) -> list[float]:
    for _ in range(5):
        client.get(path).raise_for_status()
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def _calls(settings: Settings, label: str, calls: int, note: str) -> list[Figure]:
    url = settings.dashboard.base_url
    user = f"user-{7 % CUSTOMERS}"
    paths = {
        "activity (15 min)": "/api/activity?minutes=15",
        "activity (3 h)": "/api/activity?minutes=180",
        "funnel (1 h)": "/api/funnel?window=1h",
        "funnel (all)": "/api/funnel?window=all",
        "sales": "/api/sales?n=10",
        "places": "/api/places?n=10",
        "audience (browsers, devices, bots)": "/api/audience",
        "sessions (days, engagement)": "/api/sessions?days=7&n=10",
        "repeat buyers (PostgreSQL)": "/api/repeat-buyers?n=10",
        "user lookup": f"/api/users/{user}",  # MongoDB's counts and latest sessions too
        "health": "/api/health",
    }
    figures = []
    with httpx.Client(base_url=url, timeout=60) as client:
        base = _time_calls(client, "/healthz", calls)
        floor = percentile(base, 95)
        for name, path in paths.items():
            ms = _time_calls(client, path, calls)
            p95 = percentile(ms, 95)
            console.print(f"  {name}: p50 {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms")
            figures.append(
                Figure(
                    f"dashboard {name} p95 ({label})",
                    p95,
                    "ms",
                    limit_name="/healthz p95 (HTTP alone)",
                    limit_value=floor,
                    target=f"< {TARGET_MS} ms",
                    met=p95 < TARGET_MS,
                    samples=ms,
                    note=f"GET {path}; {calls} calls after 5 warm-up; p50 {statistics.median(ms):.1f} ms; {note}",
                )
            )
    return figures


def run(
    settings: Settings,
    quick: bool = False,
    purchases: int | None = None,
    sizes: tuple[int, ...] | None = None,
    calls: int | None = None,
) -> list[Figure]:
    from shopstream_stack.apps import DashboardService

    n_purchases = purchases or (100_000 if quick else 1_000_000)
    sizes = sizes or ((100_000, 1_000_000) if quick else (1_000_000, 10_000_000))
    calls = calls or (10 if quick else 30)
    console.print(
        f"[bold]dashboard[/bold]: {n_purchases:,} purchases and {' then '.join(f'{n:,}' for n in sizes)} events; "
        f"{calls} calls each"
    )
    with spark_for(settings, "shopstream-bench-dashboard") as spark:
        console.print(f"  writing {n_purchases:,} purchases to the lake")
        generate(spark, output_url(settings), n_purchases)
    _fill_repeat_buyers(settings, 10_000)
    url = settings.dashboard.base_url
    figures: list[Figure] = []
    stored, rss_by_size = 0, {}
    for n_events in sizes:
        _fill_events(settings, stored, n_events)
        read = n_events - stored
        stored = n_events
        label = f"{n_purchases:,} purchases, {n_events:,} events"
        svc, proc = DashboardService(settings), list[psutil.Process]()
        svc.start()
        try:
            load_s = _wait_loaded(url, n_purchases, n_events, timeout_s=3600, proc=proc)
            console.print(f"  read {read:,} new events (and the lake) in {load_s:.0f} s")
            figures += _calls(settings, label, calls, f"the read model read {read:,} new events in {load_s:.0f} s")
            peak, after = _Peak.seen.get(proc[0].pid, 0), _Peak.sample(proc[0])
        finally:
            svc.stop()
        rss_by_size[n_events] = after
        console.print(f"  dashboard RSS: {peak / 2**20:.0f} MB at most while reading, {after / 2**20:.0f} MB after")
        svc, proc = DashboardService(settings), list[psutil.Process]()
        t0 = time.monotonic()
        svc.start()  # returns once /healthz answers
        try:
            started_s = time.monotonic() - t0
            _wait_loaded(url, n_purchases, n_events, timeout_s=600, proc=proc)
            ready_s = time.monotonic() - t0
        finally:
            svc.stop()
        console.print(f"  restart to ready: {ready_s:.1f} s, of which {started_s:.1f} s until the process answered")
        figures += [
            Figure(
                f"dashboard RSS after the calls ({label})",
                after / 2**20,
                "MB",
                limit_name=f"RSS at {sizes[0]:,} events" if n_events != sizes[0] else "",
                limit_value=rss_by_size[sizes[0]] / 2**20 if n_events != sizes[0] else None,
                note=f"the uvicorn process; {peak / 2**20:.0f} MB at most while reading {read:,} new events; "
                f"DuckDB's memory limit {settings.dashboard.memory_limit_mb} MB",
            ),
            Figure(
                f"dashboard restart to ready ({label} stored)",
                ready_s,
                "s",
                limit_name="the start that read the new events",
                limit_value=load_s,
                target="seconds",
                note=f"from starting the process to an answer with every event and purchase counted, on the "
                f"read model file the previous start left; {started_s:.1f} s of it until the process answered "
                f"/healthz (imports, clients), {ready_s - started_s:.1f} s from then",
            ),
        ]
    return figures
