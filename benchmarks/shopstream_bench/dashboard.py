"""The dashboard's data calls on 1M purchases and 1M events (target: each under 300 ms).

Needs: Kafka, MongoDB, PostgreSQL and S3 (`isolated_stack(SERVERS)`), Spark's s3a jars.

Not timed: 1M purchases written to the lake's output path by Spark (the analysis benchmark's
generator: the streaming job's schema, 50,000 customers, timestamps over 24 hours), 1M
user events inserted into MongoDB as the drain stores them (spread over the same 24 hours),
10,000 repeat-buyer rows in PostgreSQL; then the dashboard is started as `invoke up` runs it
(a uvicorn process) and its read model loads everything (that load time is reported).

Timed: each data call the page makes, over HTTP from this process, 5 warm-up calls then
`calls` timed ones; the figure is the p95. Limit, same run: the p95 of `/healthz` (the HTTP
round trip with no work behind it). Also shown: how long the sales answer takes to compute
after new purchases arrive (the lake's sync thread does it once per change, before the
page asks; the dashboard reports it in the lake source's detail).
"""

from __future__ import annotations

import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
from rich.console import Console
from rich.progress import Progress

from shopstream.adapters.mongo import mongo_client
from shopstream.adapters.postgres import pg_engine
from shopstream.locations import output_url
from shopstream.settings import Settings
from shopstream_analysis.warehouse import replace_repeat_buyers
from shopstream_batch.store import ensure_collections

from .aggregation import _events
from .analysis import AS_OF, CUSTOMERS, generate
from .harness import Figure, percentile, spark_for

SERVERS = ["kafka", "mongo", "postgres", "s3"]
TARGET_MS = 300
console = Console()


def _fill_events(settings: Settings, n: int) -> None:
    client = mongo_client(settings.mongo)
    colls = ensure_collections(client[settings.mongo.database], settings.batch)
    with Progress() as progress:
        task = progress.add_task(f"{n:,} events into MongoDB", total=n)
        for start in range(0, n, 20_000):
            docs = _events(min(20_000, n - start), f"d{start}-{uuid.uuid4().hex[:6]}")
            for i, d in enumerate(docs):
                d["UserId"] = f"user-{(start + i) * 7 % CUSTOMERS}"
                d["TimeStamp"] = AS_OF - timedelta(seconds=(start + i) * 7919 % 86_400)
            colls.events.insert_many(docs, ordered=False)
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


def _wait_loaded(url: str, purchases: int, events: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while True:
        sources = {s["name"]: s for s in httpx.get(f"{url}/api/activity", timeout=60).json()["sources"]}
        sales = httpx.get(f"{url}/api/sales", timeout=60).json()
        if (
            sales["purchases"] >= purchases
            and sources["mongodb"]["state"] == "up"
            and (sources["mongodb"]["detail"] or "").startswith(f"{events:,} events")
        ):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"read model not loaded after {timeout_s:.0f} s: {sources}, {sales['purchases']:,}")
        time.sleep(2)


def _time_calls(client: httpx.Client, path: str, calls: int) -> list[float]:
    for _ in range(5):
        client.get(path).raise_for_status()
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.get(path).raise_for_status()
        ms.append((time.perf_counter() - t0) * 1000)
    return ms


def run(
    settings: Settings,
    quick: bool = False,
    purchases: int | None = None,
    events: int | None = None,
    calls: int | None = None,
) -> list[Figure]:
    from shopstream_stack.apps import DashboardService

    n_purchases = purchases or (100_000 if quick else 1_000_000)
    n_events = events or (100_000 if quick else 1_000_000)
    calls = calls or (10 if quick else 30)
    console.print(f"[bold]dashboard[/bold]: {n_purchases:,} purchases and {n_events:,} events; {calls} calls each")
    with spark_for(settings, "shopstream-bench-dashboard") as spark:
        console.print(f"  writing {n_purchases:,} purchases to the lake")
        generate(spark, output_url(settings), n_purchases)
    _fill_events(settings, n_events)
    _fill_repeat_buyers(settings, 10_000)

    svc = DashboardService(settings)
    svc.start()
    try:
        url = settings.dashboard.base_url
        load_s = _wait_loaded(url, n_purchases, n_events, timeout_s=1800)
        console.print(f"  read model loaded in {load_s:.0f} s")
        user = f"user-{7 % CUSTOMERS}"
        paths = {
            "activity (15 min)": "/api/activity?minutes=15",
            "funnel (1 h)": "/api/funnel?window=1h",
            "funnel (all)": "/api/funnel?window=all",
            "sales": "/api/sales?n=10",
            "repeat buyers (PostgreSQL)": "/api/repeat-buyers?n=10",
            "user lookup": f"/api/users/{user}",
            "health": "/api/health",
        }
        figures = []
        detail = httpx.get(f"{url}/api/sales", timeout=60).json()["source"]["detail"] or ""
        if "sales computed in " in detail:  # the lake sync computes the sales answer once per new data
            warm_ms = float(detail.rsplit("sales computed in ", 1)[1].split()[0].replace(",", ""))
            figures.append(
                Figure(
                    f"dashboard sales answer recomputed after new data ({n_purchases:,} purchases)",
                    warm_ms,
                    "ms",
                    note="in the lake's sync thread, once per change of the purchases, so no data call waits for it",
                )
            )
        with httpx.Client(base_url=url, timeout=60) as client:
            base = _time_calls(client, "/healthz", calls)
            floor = percentile(base, 95)
            for name, path in paths.items():
                ms = _time_calls(client, path, calls)
                p95 = percentile(ms, 95)
                console.print(f"  {name}: p50 {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms")
                figures.append(
                    Figure(
                        f"dashboard {name} p95 ({n_purchases:,} purchases, {n_events:,} events)",
                        p95,
                        "ms",
                        limit_name="/healthz p95 (HTTP alone)",
                        limit_value=floor,
                        target=f"< {TARGET_MS} ms",
                        met=p95 < TARGET_MS,
                        samples=ms,
                        note=f"GET {path}; {calls} calls after 5 warm-up; p50 {statistics.median(ms):.1f} ms; "
                        f"read model loaded in {load_s:.0f} s",
                    )
                )
    finally:
        svc.stop()
    return figures
