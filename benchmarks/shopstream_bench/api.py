"""Ingestion API under load from a separate process (`wrk`), with the limits measured in the same run.

Needs: the Kafka broker (`isolated_stack(["kafka"])`), and the `wrk` binary (Debian package `wrk`).

What is measured, each with `wrk -t1 -c<connections>` (closed loop, every connection sends its
next request when the previous answer came back) against the real API, started as the stack
starts it (`uvicorn --factory shopstream_api.main:create_app`, one worker; `ApiService`):

- PUT /SendEvent, one unique valid event per request (benchmarks/wrk/send_event.lua):
  requests/s, p50 and p99 latency.
- POST /PurchasedItems, 100 purchases per request (benchmarks/wrk/purchased_items.lua): purchases/s.

Both API processes (real and ceiling, below) run side by side on their own ports; within each
repeat the cases take turns (events real, events ceiling, purchases real, purchases ceiling,
Kafka client), so a change in the machine's load hits them alike. Medians over the repeats.

Every 2xx must have been acknowledged by the broker: the topic's end offsets must have grown
by at least (2xx answers x records per request); they may grow by a little more, because
requests wrk abandons when its time is up are still published, at most one per connection.

The limits, measured in the same run:
- HTTP ceiling: the same app, middleware and validation, same uvicorn command, with publishing
  switched off: `ceiling_app` is a uvicorn factory that builds the app with `create_app` and
  puts `NullPublisher`, which acknowledges at once, where the routes' publisher dependency
  finds the publisher (`app.state.publisher`). The routes still build and serialise the
  records; only the Kafka round trip is gone. Nothing in components/api changes for it.
- Kafka client: the API's own `KafkaPublisher` (aiokafka, the very same producer config)
  publishing the same kind of pre-serialised records straight to the broker, from as many
  concurrent senders as wrk has connections, each awaiting its acknowledgement as a request
  handler does (1 record per send for events, 100 for purchases).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from shopstream.adapters.kafka import end_offsets
from shopstream.settings import Settings

from .harness import Figure, percentile

SERVERS = ["kafka"]
WRK_DIR = Path(__file__).resolve().parents[1] / "wrk"
CEILING_FACTORY = "shopstream_bench.api:ceiling_app"
API_FACTORY = "shopstream_api.main:create_app"
PURCHASES_PER_REQUEST = 100
EVENT_CONNECTIONS = 32
PURCHASE_CONNECTIONS = 8

console = Console()


# -- the HTTP ceiling: the same app with publishing switched off ------------------------------
class NullPublisher:
    """Stands in for `KafkaPublisher`: acknowledges at once, counts like the real one."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self.offset = 0

    async def publish(self, topic: str, records: list[tuple[bytes, bytes]]):
        from shopstream_api.publisher import Ack

        self.metrics.published.labels(topic).inc(len(records))
        acks = [Ack(0, self.offset + i) for i in range(len(records))]
        self.offset += len(records)
        return acks

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def ceiling_app():
    """`uvicorn --factory shopstream_bench.api:ceiling_app`: the API with publishing switched off."""
    from shopstream_api.main import create_app

    app = create_app()
    # the routes get their publisher from app.state (shopstream_api.deps.get_publisher): the
    # same dependency path as in the real app, so the only difference is the Kafka round trip.
    # (With FastAPI's dependency_overrides, every dependency is re-analysed on every request, a
    # cost the real app does not pay: a first version of this ceiling came out below the real app.)
    # The real publisher stays in the lifespan: it connects at start-up and then sits idle.
    from shopstream_api.ingestor import Ingestor

    app.state.publisher = NullPublisher(app.state.metrics)
    app.state.ingestor = Ingestor(app.state.publisher, None)  # no journal either: HTTP alone
    return app


def _api_service(settings: Settings, factory: str, name: str):
    """The API as the stack runs it (`ApiService`), or the same command with another factory."""
    from shopstream_stack.apps import ApiService

    class BenchApi(ApiService):
        @property
        def listen(self):  # the API's settings group, whatever this copy is called
            return self.settings.api

        def procs(self):
            procs = super().procs()
            for p in procs:
                p.argv = [factory if a == API_FACTORY else a for a in p.argv]
            return procs

    BenchApi.name = name
    return BenchApi(settings)


# -- wrk ---------------------------------------------------------------------------------------
@dataclass
class WrkRun:
    requests: int
    seconds: float
    ok: int
    not_ok: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def ok_per_s(self) -> float:
        return self.ok / self.seconds


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk); the API benchmark needs it")
    return found


def run_wrk(url: str, script: str, seconds: float, connections: int, args: list[str]) -> WrkRun:
    argv = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / script),
        url,
        "--",
        *args,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    data = json.loads(lines[-1].removeprefix("WRK_JSON "))
    return WrkRun(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        ok=data["ok"],
        not_ok=data["not_ok"],
        errors=data["errors"],
        p50_ms=data["latency_us"]["p50"] / 1000,
        p99_ms=data["latency_us"]["p99"] / 1000,
    )


def _settled_end(settings: Settings, topic: str, timeout_s: float) -> int:
    """The topic's end offset once it stops moving (publishes still in flight land first)."""
    deadline = time.monotonic() + timeout_s
    last = sum(end_offsets(settings.kafka, topic).values())
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = sum(end_offsets(settings.kafka, topic).values())
        if now == last:
            return now
        last = now
    return last


# -- the Kafka client limit --------------------------------------------------------------------
def event_records(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    from shopstream.contracts import UserEventRecord

    t0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
    now = datetime.now(UTC)
    names = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
    out = []
    for i in range(n):
        r = UserEventRecord(
            UserId=f"user-{(i * 7919) % 20000}",
            SessionId=f"sess-{tag}-{i}",
            EventName=names[i % 3],
            TimeStamp=t0 + timedelta(milliseconds=i),
            Attributes={
                "ProductId": f"sku-{i % 5000:05d}",
                "Price": Decimal(f"{5 + i % 500}.{i % 100:02d}"),
                "Discount": Decimal(f"{i % 5}.{(i * 3) % 100:02d}"),
            },
            EventId=str(uuid.uuid4()),
            IngestedAt=now,
        )
        out.append((r.UserId.encode(), r.model_dump_json().encode()))
    return out


def purchase_records(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    """n valid PurchaseRecords as the API publishes them: (UserId key, JSON value)."""
    from shopstream.contracts import PaymentType, PurchaseRecord

    t0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
    now = datetime.now(UTC)
    kinds = list(PaymentType)
    out = []
    for k in range(n):
        a, b = 1 + k % 300, 1 + (k * 7) % 200
        r = PurchaseRecord(
            SessionId=f"sess-{tag}-{k}",
            TimeStamp=t0 + timedelta(seconds=k % 3600),
            UserId=f"user-{(k * 7919) % 20000}",
            TotalPrice=Decimal(2 * a + b),
            OrderId=f"order-{tag}-{k}",
            PaymentType=kinds[k % 8],
            Products=[
                {
                    "ProductId": f"sku-{k % 5000:05d}",
                    "ItemCount": 2,
                    "ItemPrice": Decimal(f"{a}.50"),
                    "ItemDiscount": Decimal("0.50"),
                },
                {
                    "ProductId": f"sku-{(k * 31) % 5000:05d}",
                    "ItemCount": 1,
                    "ItemPrice": Decimal(f"{b}.25"),
                    "ItemDiscount": Decimal("0.25"),
                },
            ],
            EventId=str(uuid.uuid4()),
            IngestedAt=now,
        )
        out.append((r.UserId.encode(), r.model_dump_json().encode()))
    return out


async def _client_load(
    settings: Settings, topic: str, batches: list[list[tuple[bytes, bytes]]], concurrency: int
) -> tuple[float, list[float]]:
    """Publish every batch through the API's own KafkaPublisher from `concurrency` senders,
    each awaiting its acknowledgement; returns (records/s, per-batch latencies in seconds)."""
    from prometheus_client import CollectorRegistry

    from shopstream_api.metrics import ApiMetrics
    from shopstream_api.publisher import KafkaPublisher

    publisher = KafkaPublisher(settings.kafka, settings.api, ApiMetrics(CollectorRegistry()))
    assert await publisher.ready()
    latencies: list[float] = []
    queue = list(reversed(batches))

    async def sender() -> None:
        while queue:
            batch = queue.pop()
            t0 = time.perf_counter()
            await publisher.publish(topic, batch)
            latencies.append(time.perf_counter() - t0)

    try:
        await publisher.publish(topic, batches[0])  # warm: producer id, metadata, connections
        t0 = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    finally:
        await publisher.close()
    return sum(len(b) for b in batches) / elapsed, latencies


def client_load(settings: Settings, topic: str, batches, concurrency: int) -> tuple[float, list[float]]:
    try:
        import uvloop  # what uvicorn runs the API on

        return uvloop.run(_client_load(settings, topic, batches, concurrency))
    except ImportError:
        return asyncio.run(_client_load(settings, topic, batches, concurrency))


# -- the benchmark -----------------------------------------------------------------------------
def _measure(
    svc, topic: str, script: str, seconds: float, connections: int, per_request: int, label: str
) -> tuple[WrkRun, list[str]]:
    """One wrk run against a running API; its 2xx count checked against the topic's end-offset
    growth (none at all for the ceiling, which must not publish). Returns (run, problems)."""
    settings, problems = svc.settings, []
    publishes = svc.name != "api-ceiling"
    before = _settled_end(settings, topic, 10)
    r = run_wrk(settings.api.base_url, script, seconds, connections, [uuid.uuid4().hex[:8], str(per_request)])
    msg = (
        f"  {label} {svc.name}: {r.ok:,} x 2xx in {r.seconds:.1f} s = {r.ok_per_s * per_request:,.0f}"
        f"{' purchases' if per_request > 1 else ' requests'}/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms"
    )
    if r.not_ok or any(r.errors.values()):
        problems.append(f"{label}: {r.not_ok} non-2xx, socket errors {r.errors}")
        msg += f", non-2xx {r.not_ok}, errors {r.errors}"
    grown = _settled_end(settings, topic, 15) - before
    acked, slack = r.ok * per_request, connections * per_request
    if not publishes:
        msg += f"; topic +{grown:,} (publishing off)"
        if grown:
            problems.append(f"{label}: publishing was off, yet the topic grew by {grown:,}")
    else:
        msg += f"; topic +{grown:,} records for {acked:,} acknowledged"
        if grown < acked:
            problems.append(f"{label}: {r.ok:,} 2xx carried {acked:,} records but the topic grew by {grown:,} only")
        elif grown > acked + slack:
            problems.append(
                f"{label}: the topic grew by {grown:,}, more than the {acked:,} acknowledged plus {slack} in flight"
            )
    console.print(msg)
    return r, problems


def run(
    settings: Settings,
    quick: bool = False,
    seconds: float | None = None,
    repeats: int | None = None,
    event_connections: int = EVENT_CONNECTIONS,
    purchase_connections: int = PURCHASE_CONNECTIONS,
) -> list[Figure]:
    from shopstream_stack.isolated import free_port

    seconds = seconds or (5 if quick else 20)
    repeats = repeats or (2 if quick else 3)
    kafka = settings.kafka
    med = statistics.median
    console.print(
        f"[bold]api[/bold]: wrk -t1, {seconds:g} s x {repeats} per case, {event_connections} connections "
        f"for events, {purchase_connections} for purchases; the cases take turns within each repeat"
    )

    # the API processes up at once, on their own ports, idle while another is measured: as the
    # stack runs it, without its acknowledgement journal (what the journal costs), the ceiling
    def on_own_port(**api) -> Settings:
        return settings.model_copy(update={"api": settings.api.model_copy(update={"port": free_port(), **api})})

    real = _api_service(settings, API_FACTORY, "api")
    unjournaled = _api_service(on_own_port(journal=False), API_FACTORY, "api-no-journal")
    ceiling = _api_service(on_own_port(), CEILING_FACTORY, "api-ceiling")
    apis = (real, unjournaled, ceiling)
    n_events = 20_000 if quick else 100_000
    n_purchases = 20_000 if quick else 200_000
    events = [[r] for r in event_records(n_events, "client")]
    purchases = purchase_records(n_purchases, "client")
    batches = [purchases[j : j + PURCHASES_PER_REQUEST] for j in range(0, len(purchases), PURCHASES_PER_REQUEST)]
    cases = {
        "events": ("send_event.lua", event_connections, 1, kafka.user_events_topic),
        "purchases": ("purchased_items.lua", purchase_connections, PURCHASES_PER_REQUEST, kafka.purchases_topic),
    }
    runs: dict[tuple[str, str], list[WrkRun]] = {}
    problems: dict[str, list[str]] = {"events": [], "purchases": []}
    ev_client, pu_client = [], []
    try:
        for svc in apis:
            svc.start()
            for script, conns, per, _topic in cases.values():
                run_wrk(svc.settings.api.base_url, script, 2, conns, [f"warm{uuid.uuid4().hex[:6]}", str(per)])
        for i in range(repeats):
            for case, (script, conns, per, topic) in cases.items():
                for svc in apis:
                    r, bad = _measure(svc, topic, script, seconds, conns, per, f"run {i + 1}/{repeats} {case}")
                    runs.setdefault((case, svc.name), []).append(r)
                    problems[case] += bad
            # the Kafka client alone: same producer config, same concurrency, pre-serialised records
            rate, lat = client_load(settings, kafka.user_events_topic, events, event_connections)
            ev_client.append((rate, percentile(lat, 50) * 1000, percentile(lat, 99) * 1000))
            prate, _ = client_load(settings, kafka.purchases_topic, batches, purchase_connections)
            pu_client.append(prate)
            console.print(
                f"  run {i + 1}/{repeats} Kafka client alone: {rate:,.0f} events/s (p50 "
                f"{ev_client[-1][1]:.1f} ms, p99 {ev_client[-1][2]:.1f} ms), {prate:,.0f} purchases/s "
                f"in batches of {PURCHASES_PER_REQUEST}"
            )
    finally:
        for svc in reversed(apis):
            svc.stop()
    ev_api, ev_ceil = runs[("events", "api")], runs[("events", "api-ceiling")]
    pu_api, pu_ceil = runs[("purchases", "api")], runs[("purchases", "api-ceiling")]
    ev_bare, pu_bare = runs[("events", "api-no-journal")], runs[("purchases", "api-no-journal")]
    ev_problems, pu_problems = problems["events"], problems["purchases"]

    ev_rate, ceil_rate = med(r.ok_per_s for r in ev_api), med(r.ok_per_s for r in ev_ceil)
    client_rate = med(c[0] for c in ev_client)
    p50, p99 = med(r.p50_ms for r in ev_api), med(r.p99_ms for r in ev_api)
    ceil_p50, ceil_p99 = med(r.p50_ms for r in ev_ceil), med(r.p99_ms for r in ev_ceil)
    client_p50, client_p99 = med(c[1] for c in ev_client), med(c[2] for c in ev_client)
    pu_rate = med(r.ok_per_s * PURCHASES_PER_REQUEST for r in pu_api)
    pu_ceil_rate = med(r.ok_per_s * PURCHASES_PER_REQUEST for r in pu_ceil)
    pu_client_rate = med(pu_client)
    bare_rate, bare_p99 = med(r.ok_per_s for r in ev_bare), med(r.p99_ms for r in ev_bare)
    pu_bare_rate = med(r.ok_per_s * PURCHASES_PER_REQUEST for r in pu_bare)

    shape = (
        f"wrk -t1 -c{event_connections}, {seconds:g} s x {repeats}, one uvicorn worker; 2 CPU cores shared "
        "by wrk, uvicorn and the broker"
    )
    checked = "every 2xx was on the topic (end-offset growth >= acknowledged records)"
    ev_note = f"{shape}. " + ("; ".join(ev_problems) if ev_problems else checked)
    ratio = ev_rate / ceil_rate if ceil_rate else 0.0
    pu_note = (
        f"wrk -t1 -c{purchase_connections}, {PURCHASES_PER_REQUEST} purchases per request, {seconds:g} s x "
        f"{repeats}. " + ("; ".join(pu_problems) if pu_problems else checked)
    )
    return [
        Figure(
            "PUT /SendEvent sustained",
            ev_rate,
            "requests/s",
            limit_name="HTTP ceiling (publishing off)",
            limit_value=ceil_rate,
            other_limits={f"Kafka client alone ({event_connections} senders)": client_rate},
            target=">= 5,000/s and >= 60% of the HTTP ceiling",
            met=ev_rate >= 5000 and ratio >= 0.6 and not ev_problems,
            samples=[r.ok_per_s for r in ev_api],
            note=ev_note,
        ),
        Figure(
            "PUT /SendEvent p50 latency",
            p50,
            "ms",
            limit_name="HTTP ceiling (publishing off)",
            limit_value=ceil_p50,
            other_limits={"Kafka client alone (send to ack)": client_p50},
            target="< 50 ms (below the p99 target)",
            met=p50 < 50,
            samples=[r.p50_ms for r in ev_api],
            note=f"at {ev_rate:,.0f} requests/s, {event_connections} connections",
        ),
        Figure(
            "PUT /SendEvent p99 latency",
            p99,
            "ms",
            limit_name="HTTP ceiling (publishing off)",
            limit_value=ceil_p99,
            other_limits={"Kafka client alone (send to ack)": client_p99},
            target="< 50 ms",
            met=p99 < 50,
            samples=[r.p99_ms for r in ev_api],
            note=f"at {ev_rate:,.0f} requests/s, {event_connections} connections",
        ),
        Figure(
            f"POST /PurchasedItems ({PURCHASES_PER_REQUEST} per request)",
            pu_rate,
            "purchases/s",
            limit_name="HTTP ceiling (publishing off)",
            limit_value=pu_ceil_rate,
            other_limits={
                f"Kafka client alone ({purchase_connections} senders x {PURCHASES_PER_REQUEST})": pu_client_rate
            },
            target=">= 30,000/s",
            met=pu_rate >= 30_000 and not pu_problems,
            samples=[r.ok_per_s * PURCHASES_PER_REQUEST for r in pu_api],
            note=pu_note,
        ),
        Figure(
            "PUT /SendEvent with the acknowledgement journal",
            ev_rate,
            "requests/s",
            limit_name="the same API, journal off",
            limit_value=bare_rate,
            target="costs <= 20% of the requests/s",
            met=bare_rate > 0 and ev_rate >= 0.8 * bare_rate,
            samples=[r.ok_per_s for r in ev_api],
            note="journal: one fdatasync per group of requests, then every record read back from the broker "
            "twice (SHOPSTREAM_API__JOURNAL)",
        ),
        Figure(
            "PUT /SendEvent p99 latency with the acknowledgement journal",
            p99,
            "ms",
            limit_name="the same API, journal off",
            limit_value=bare_p99,
            target="adds <= 10 ms",
            met=p99 <= bare_p99 + 10,
            samples=[r.p99_ms for r in ev_api],
            note=f"{event_connections} connections",
        ),
        Figure(
            f"POST /PurchasedItems with the acknowledgement journal ({PURCHASES_PER_REQUEST} per request)",
            pu_rate,
            "purchases/s",
            limit_name="the same API, journal off",
            limit_value=pu_bare_rate,
            target="costs <= 20% of the purchases/s",
            met=pu_bare_rate > 0 and pu_rate >= 0.8 * pu_bare_rate,
            samples=[r.ok_per_s * PURCHASES_PER_REQUEST for r in pu_api],
            note=pu_note,
        ),
    ]
