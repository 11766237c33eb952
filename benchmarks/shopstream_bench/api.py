"""Ingestion API under load from a separate process (`wrk`), beside two baselines measured in the same run.

Needs: the `wrk` binary (Debian package `wrk`). Every measured run starts its own embedded
broker, new and empty (`_fresh_app`), so `SERVERS` is empty.

Every app runs as the stack runs ours (`ApiService`: `uvicorn --factory ... --workers N`), on
its own port, with the same number of workers, at 1 and at 2 workers:

- api: ours, with the acknowledgement journal (acks=all, fdatasync group commit), as `invoke up`;
- api-no-journal: ours with `SHOPSTREAM_API__JOURNAL=false`, what the journal costs;
- naive: a seed-style peer, sync endpoints doing kafka-python `send().get()` per request
  (`baselines.naive_app`);
- floor: bare FastAPI with a plain Pydantic model, no Kafka, no middleware
  (`baselines.floor_app`): what the framework allows here, the limit our figures are a ratio of.

Loads, closed loop (every connection sends its next request when the answer came back):
- PUT /SendEvent, `wrk -t2 -c64`, one unique valid event per request (benchmarks/wrk/send_event.lua):
  requests/s, p50 and p99 latency;
- POST /PurchasedItems, `wrk -t2 -c16`, 100 purchases per request (benchmarks/wrk/purchased_items.lua):
  purchases/s.

Within each repeat the apps take turns case by case, so a change in the machine's load hits
them alike; medians over the repeats. Each run has a broker and an app of its own, started
for it and warmed for 2 s, so no run pays for the records of another. Every 2xx of a
publishing app must have been acknowledged by the broker: the topic's end offsets must have
grown by at least (2xx answers x records per request); they may grow by a little more,
because requests wrk abandons when its time is up are still published, at most one per
connection. The floor must publish nothing.

Every request comes as the generator sends it, from the shop's front proxy: with the
User-Agent and X-Forwarded-For of one of `VISITORS` visitors drawn by the generator's own
`draw_visitor` (`visitors_lua` writes them for the wrk scripts), which the API trusts from
wrk's loopback (`api.trusted_proxies`' default). What capturing them costs (`capture`): at the
first worker count, PUT /SendEvent with those headers against the same without them, a few
short runs in turn.

Also measured: the Kafka client alone, the API's own `KafkaPublisher` publishing pre-serialised
records straight to the broker from as many concurrent senders as wrk has connections.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console

from shopstream.adapters.kafka import end_offsets
from shopstream.settings import Settings
from shopstream_stack.isolated import free_port

from .harness import Figure, isolated_stack, percentile

if TYPE_CHECKING:
    from shopstream_generator.visitors import Visitor

SERVERS: list[str] = []  # none shared: each measured run starts its own broker (BROKER)
BROKER = ["kafka"]
WRK_DIR = Path(__file__).resolve().parents[1] / "wrk"
API_FACTORY = "shopstream_api.main:create_app"
NAIVE_FACTORY = "shopstream_bench.baselines:naive_app"
FLOOR_FACTORY = "shopstream_bench.baselines:floor_app"
PURCHASES_PER_REQUEST = 100
WRK_THREADS = 2
EVENT_CONNECTIONS = 64
PURCHASE_CONNECTIONS = 16
WORKER_COUNTS = (1, 2)

console = Console()


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

        def healthy(self) -> bool:
            if factory == API_FACTORY:
                return super().healthy()
            return httpx.get(f"{self.settings.api.base_url}/openapi.json", timeout=2).status_code == 200

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


def run_wrk(url: str, script: str, seconds: float, connections: int, args: list[str], visitors: bool = True) -> WrkRun:
    """wrk with one of our scripts; `args` are the script's run tag and records per request.
    With `visitors`, every request carries a generated visitor's User-Agent and X-Forwarded-For
    (`visitors_lua`), which the API trusts from wrk's loopback as from the shop's front proxy;
    without, it has neither, and the API stores its loopback peer and no user agent."""
    args = [*args, str(visitors_lua())] if visitors else args
    argv = [
        wrk_binary(),
        f"-t{WRK_THREADS}",
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
VISITORS = 2_000  # distinct senders (browser and address) among the records' 20,000 users


@functools.cache
def _drawn() -> list[Visitor]:
    """VISITORS visitors drawn as the generator draws them (its own function, a fixed seed)."""
    from shopstream_generator.catalogue import seeded_faker
    from shopstream_generator.visitors import draw_visitor

    fake = seeded_faker("bench-visitors")
    return [draw_visitor(fake) for _ in range(VISITORS)]


@functools.cache
def _visitors() -> list[tuple[str, str]]:
    """(stored ClientIp, UserAgent) of the drawn visitors: what the API keeps of their headers."""
    from shopstream_api.client import stored_address

    return [(stored_address(v.client_ip) or "", v.user_agent) for v in _drawn()]


def envelope(user: int) -> dict[str, str]:
    """The ClientIp and UserAgent a user's records carry (one visitor per user, as generated)."""
    ip, agent = _visitors()[user % VISITORS]
    return {"ClientIp": ip, "UserAgent": agent}


def foreign_envelopes(envelopes: Iterable[tuple[str | None, str | None]]) -> set[tuple[str | None, str | None]]:
    """The (ClientIp, UserAgent) pairs among `envelopes` that are no drawn visitor's: none when
    every record carries what its sender's headers said, through the API's capture."""
    return set(envelopes) - set(_visitors())


def enrichment_seconds(envelopes: Iterable[tuple[str | None, str | None]]) -> float:
    """Time to enrich every (ClientIp, UserAgent) as the drain and the streaming job do, caches cold."""
    from shopstream.enrichment import device, enrich, enrichment_fields

    pairs = list(envelopes)
    enrich.cache_clear()
    device.cache_clear()
    t0 = time.perf_counter()
    for ip, agent in pairs:
        enrichment_fields(ip, agent)
    return time.perf_counter() - t0


def _lua_string(text: str) -> str:
    if not all(" " <= ch <= "~" for ch in text):
        raise ValueError(f"not printable ASCII, as an HTTP header value should be: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@functools.cache
def visitors_lua() -> Path:
    """The drawn visitors as a Lua file the wrk scripts load (common.lua): a list of
    {X-Forwarded-For, User-Agent}, the headers the generator sends as the shop's front proxy.
    Visitor k (from 0) is user k's, as in `envelope`, at Lua index k + 1. Written once per
    process, into a temporary folder removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="shopstream-bench-wrk-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "visitors.lua"
    rows = []
    for v in _drawn():
        h = v.headers
        rows.append(f"  {{{_lua_string(h['X-Forwarded-For'])}, {_lua_string(h['User-Agent'])}}},")
    path.write_text("-- written by shopstream_bench.api.visitors_lua\nreturn {\n" + "\n".join(rows) + "\n}\n")
    return path


def event_records(n: int, tag: str) -> list[tuple[bytes, bytes]]:
    from shopstream.contracts import UserEventRecord

    t0 = datetime(2026, 11, 22, 10, tzinfo=UTC)
    now = datetime.now(UTC)
    names = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
    out = []
    for i in range(n):
        user = (i * 7919) % 20000
        r = UserEventRecord(
            UserId=f"user-{user}",
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
            **envelope(user),
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
        a, b, user = 1 + k % 300, 1 + (k * 7) % 200, (k * 7919) % 20000
        r = PurchaseRecord(
            SessionId=f"sess-{tag}-{k}",
            TimeStamp=t0 + timedelta(seconds=k % 3600),
            UserId=f"user-{user}",
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
            **envelope(user),
        )
        out.append((r.UserId.encode(), r.model_dump_json().encode()))
    return out


async def _client_load(
    settings: Settings, topic: str, batches: list[list[tuple[bytes, bytes]]], concurrency: int
) -> tuple[float, list[float]]:
    """Publish every batch through the API's own KafkaPublisher from `concurrency` senders,
    each awaiting its acknowledgement; returns (records/s, per-batch latencies in seconds)."""
    from shopstream_api.metrics import ApiMetrics
    from shopstream_api.publisher import KafkaPublisher

    publisher = KafkaPublisher(settings.kafka, settings.api, ApiMetrics())
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
    svc,
    topic: str,
    script: str,
    seconds: float,
    connections: int,
    per_request: int,
    label: str,
    visitors: bool = True,
) -> tuple[WrkRun, list[str]]:
    """One wrk run against a running app; its 2xx count checked against the topic's end-offset
    growth (none at all for the floor, which must not publish). Returns (run, problems)."""
    settings, problems = svc.settings, []
    publishes = not svc.name.startswith("floor")
    before = _settled_end(settings, topic, 10)
    tag = [uuid.uuid4().hex[:8], str(per_request)]
    r = run_wrk(settings.api.base_url, script, seconds, connections, tag, visitors=visitors)
    msg = (
        f"  {label} {svc.name}: {r.ok:,} x 2xx in {r.seconds:.1f} s = {r.ok_per_s * per_request:,.0f}"
        f"{' purchases' if per_request > 1 else ' requests'}/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms"
    )
    if r.not_ok or any(r.errors.values()):
        problems.append(f"{label} {svc.name}: {r.not_ok} non-2xx, socket errors {r.errors}")
        msg += f", non-2xx {r.not_ok}, errors {r.errors}"
    grown = _settled_end(settings, topic, 15) - before
    acked, slack = r.ok * per_request, connections * per_request
    if not publishes:
        msg += f"; topic +{grown:,} (publishes nothing)"
        if grown:
            problems.append(f"{label} {svc.name}: publishes nothing, yet the topic grew by {grown:,}")
    else:
        msg += f"; topic +{grown:,} records for {acked:,} acknowledged"
        if grown < acked:
            problems.append(
                f"{label} {svc.name}: {r.ok:,} 2xx carried {acked:,} records but the topic grew by {grown:,} only"
            )
        elif grown > acked + slack:
            problems.append(
                f"{label} {svc.name}: the topic grew by {grown:,}, more than the {acked:,} acknowledged "
                f"plus {slack} in flight"
            )
    console.print(msg)
    return r, problems


@dataclass
class Side:
    """The medians of one app at one worker count."""

    rate: float  # requests/s (events) or purchases/s
    p50_ms: float
    p99_ms: float
    samples: list[float]


def _side(runs: list[WrkRun], per_request: int) -> Side:
    med = statistics.median
    rates = [r.ok_per_s * per_request for r in runs]
    return Side(med(rates), med(r.p50_ms for r in runs), med(r.p99_ms for r in runs), rates)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def _envelopes(settings: Settings, topic: str) -> collections.Counter[tuple[str | None, str | None]]:
    """How many of the topic's records carry each (ClientIp, UserAgent), all partitions from the start."""
    from confluent_kafka import TopicPartition

    from shopstream.adapters.kafka_rd import rd_consumer

    end = end_offsets(settings.kafka, topic)
    consumer = rd_consumer(settings.kafka, **{"group.id": "shopstream-bench-envelopes", "enable.auto.commit": False})
    seen: collections.Counter[tuple[str | None, str | None]] = collections.Counter()
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in end])
        deadline = time.monotonic() + 120
        while seen.total() < sum(end.values()) and time.monotonic() < deadline:
            for m in consumer.consume(5000, timeout=1.0):
                value = m.value()
                if m.error() is None and value is not None:
                    record = json.loads(value)
                    seen[record.get("ClientIp"), record.get("UserAgent")] += 1
    finally:
        consumer.close()
    return seen


CAPTURE_SECONDS = 5  # each run of the capture figure: a few short ones, the rest of the stage is long


def capture(settings: Settings, workers: int, seconds: float, pairs: int) -> Figure:
    """What capturing the sender costs the API: PUT /SendEvent as the main case loads it, every
    request carrying a generated visitor's User-Agent and X-Forwarded-For, against the same
    without them (uvicorn resolves a forwarded address, the API truncates it and keeps the
    header); `pairs` of runs, each on a fresh app, the order alternating. Each run's records
    are read back: with the headers each must carry its visitor's, without them loopback and
    no user agent."""
    from shopstream_api.client import stored_address

    topic = settings.kafka.user_events_topic
    loopback = (stored_address("127.0.0.1"), None)  # wrk's own address, as the API stores it
    rates: dict[bool, list[float]] = {True: [], False: []}
    problems: list[str] = []
    for i in range(pairs):
        for visitors in (True, False) if i % 2 == 0 else (False, True):
            label = f"{workers} worker(s), capture {i + 1}/{pairs} {'with' if visitors else 'without'} headers"
            with _fresh_app(settings, API_FACTORY, "api", workers, {}) as svc:
                tag = [f"warm{uuid.uuid4().hex[:6]}", "1"]
                run_wrk(svc.settings.api.base_url, "send_event.lua", 2, EVENT_CONNECTIONS, tag, visitors=visitors)
                r, bad = _measure(svc, topic, "send_event.lua", seconds, EVENT_CONNECTIONS, 1, label, visitors)
                seen = _envelopes(svc.settings, topic)
            rates[visitors].append(r.ok_per_s)
            problems += bad
            wrong = foreign_envelopes(seen) if visitors else set(seen) - {loopback}
            if wrong:
                example = min(wrong, key=str)
                count = sum(seen[e] for e in wrong)
                problems.append(f"{label}: {count:,} records with another envelope, e.g. {example}")
    med = {v: statistics.median(r) for v, r in rates.items()}
    ratio = med[True] / med[False] if med[False] else 0.0
    checked = "every record carried its visitor's ClientIp (/24) and UserAgent; without the headers, loopback and none"
    return Figure(
        f"PUT /SendEvent with the senders' headers, {workers} worker{'s' if workers > 1 else ''}",
        med[True],
        "requests/s",
        limit_name="the same API, no User-Agent or X-Forwarded-For",
        limit_value=med[False],
        target=">= 0.9 (capturing the sender takes at most 10% of the requests/s)",
        met=ratio >= 0.9 and not problems,
        samples=rates[True],
        note=f"wrk -t{WRK_THREADS} -c{EVENT_CONNECTIONS}, {seconds:g} s x {pairs} each, a fresh app and broker per "
        f"run, the order alternating; with: {VISITORS:,} visitors drawn as the generator draws them, one per user "
        f"(without: {', '.join(f'{x:,.0f}' for x in rates[False])} requests/s). "
        + ("; ".join(problems) if problems else checked),
    )


# (name, uvicorn factory, API settings changed): the apps that take turns
APPS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("api", API_FACTORY, {}),
    ("api-no-journal", API_FACTORY, {"journal": False}),
    ("naive", NAIVE_FACTORY, {}),
    ("floor", FLOOR_FACTORY, {}),
)


@contextmanager
def _fresh_app(settings: Settings, factory: str, name: str, workers: int, api: dict) -> Iterator[Any]:
    """One app on a broker of its own, new and empty, and a new data folder (journal, ledger).

    The embedded broker rewrites its snapshot of everything it holds while records arrive, so
    its CPU per record grows with what earlier runs left (2% of a core at 2,000 records/s on
    an empty broker, 35% once it held 240,000): a broker shared across runs would charge each
    app for the runs before it, and our journal would read back records of earlier runs.
    """
    with isolated_stack(BROKER) as fresh:
        update = {"port": free_port(), "workers": workers, **api}
        own = fresh.model_copy(update={"api": settings.api.model_copy(update=update)})
        svc = _api_service(own, factory, name)
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()


def run(
    settings: Settings,
    quick: bool = False,
    seconds: float | None = None,
    repeats: int | None = None,
    workers: tuple[int, ...] = WORKER_COUNTS,
) -> list[Figure]:
    seconds = seconds or (5 if quick else 15)
    repeats = repeats or (2 if quick else 3)
    kafka = settings.kafka
    load_before = _load()
    console.print(
        f"[bold]api[/bold]: wrk -t{WRK_THREADS}, {seconds:g} s x {repeats} per case, {EVENT_CONNECTIONS} connections "
        f"for events, {PURCHASE_CONNECTIONS} for purchases; ours, ours without the journal, the naive peer and "
        f"the framework floor take turns within each repeat, at {', '.join(map(str, workers))} worker(s); {load_before}"
    )
    n_events = 20_000 if quick else 100_000
    n_purchases = 20_000 if quick else 200_000
    events = [[r] for r in event_records(n_events, "client")]
    purchases = purchase_records(n_purchases, "client")
    batches = [purchases[j : j + PURCHASES_PER_REQUEST] for j in range(0, len(purchases), PURCHASES_PER_REQUEST)]
    cases = {
        "events": ("send_event.lua", EVENT_CONNECTIONS, 1, kafka.user_events_topic),
        "purchases": ("purchased_items.lua", PURCHASE_CONNECTIONS, PURCHASES_PER_REQUEST, kafka.purchases_topic),
    }
    runs: dict[tuple[str, str, int], list[WrkRun]] = {}
    problems: list[str] = []
    ev_client, pu_client = [], []
    for w in workers:
        for i in range(repeats):
            for case, (script, conns, per, topic) in cases.items():
                for name, factory, api in APPS:
                    label = f"{w} worker(s), run {i + 1}/{repeats} {case}"
                    with _fresh_app(settings, factory, name, w, api) as svc:
                        run_wrk(svc.settings.api.base_url, script, 2, conns, [f"warm{uuid.uuid4().hex[:6]}", str(per)])
                        r, bad = _measure(svc, topic, script, seconds, conns, per, label)
                    runs.setdefault((case, name, w), []).append(r)
                    problems += bad
            if w == workers[0]:  # the Kafka client alone: same producer config, pre-serialised records
                with isolated_stack(BROKER) as fresh:
                    rate, lat = client_load(fresh, kafka.user_events_topic, events, EVENT_CONNECTIONS)
                with isolated_stack(BROKER) as fresh:
                    prate, _ = client_load(fresh, kafka.purchases_topic, batches, PURCHASE_CONNECTIONS)
                ev_client.append(rate)
                pu_client.append(prate)
                console.print(
                    f"  run {i + 1}/{repeats} Kafka client alone: {rate:,.0f} events/s (p99 "
                    f"{percentile(lat, 99) * 1000:.1f} ms), {prate:,.0f} purchases/s in batches of "
                    f"{PURCHASES_PER_REQUEST}"
                )
    load_after = _load()
    checked = "every 2xx was on the topic (end-offset growth >= acknowledged records), the floor published nothing"
    verdict = "; ".join(problems) if problems else checked
    shape = (
        f"wrk -t{WRK_THREADS} -c{{c}}, {seconds:g} s x {repeats}; 2 CPU cores shared by wrk, uvicorn and the "
        f"broker; before: {load_before}, after: {load_after}. {verdict}"
    )
    figures: list[Figure] = []
    console.print("\n| app | workers | PUT /SendEvent req/s | p50 ms | p99 ms | POST /PurchasedItems purchases/s |")
    console.print("| --- | --- | --- | --- | --- | --- |")
    for w in workers:
        ev = {name: _side(runs[("events", name, w)], 1) for name in ("api", "api-no-journal", "naive", "floor")}
        pu = {
            name: _side(runs[("purchases", name, w)], PURCHASES_PER_REQUEST)
            for name in ("api", "api-no-journal", "naive", "floor")
        }
        for name in ev:
            console.print(
                f"| {name} | {w} | {ev[name].rate:,.0f} | {ev[name].p50_ms:.1f} | {ev[name].p99_ms:.1f} | "
                f"{pu[name].rate:,.0f} |"
            )
        ours, naive, floor = ev["api"], ev["naive"], ev["floor"]
        vs_naive = ours.rate / naive.rate if naive.rate else 0.0
        vs_floor = ours.rate / floor.rate if floor.rate else 0.0
        tag = f"{w} worker{'s' if w > 1 else ''}"
        ev_note = shape.format(c=EVENT_CONNECTIONS)
        pu_note = shape.format(c=PURCHASE_CONNECTIONS) + f"; {PURCHASES_PER_REQUEST} purchases per request"
        figures += [
            Figure(
                f"PUT /SendEvent, {tag}",
                ours.rate,
                "requests/s",
                limit_name="framework floor (bare FastAPI, no Kafka)",
                limit_value=floor.rate,
                other_limits={
                    "naive peer (sync, kafka-python send().get())": naive.rate,
                    "ours, journal off": ev["api-no-journal"].rate,
                    **(
                        {"Kafka client alone (64 senders)": statistics.median(ev_client)}
                        if ev_client and w == 1
                        else {}
                    ),
                },
                target=">= 2x the naive peer and >= 0.6 of the floor",
                met=vs_naive >= 2 and vs_floor >= 0.6 and not problems,
                samples=ours.samples,
                note=f"ours {vs_naive:.2f}x the naive peer; p50 ours {ours.p50_ms:.1f} ms, naive "
                f"{naive.p50_ms:.1f} ms, floor {floor.p50_ms:.1f} ms. {ev_note}",
            ),
            Figure(
                f"PUT /SendEvent p99 latency, {tag}",
                ours.p99_ms,
                "ms",
                limit_name="framework floor",
                limit_value=floor.p99_ms,
                other_limits={"naive peer": naive.p99_ms, "ours, journal off": ev["api-no-journal"].p99_ms},
                target="<= 30 ms at 64 connections",
                met=ours.p99_ms <= 30,
                samples=[r.p99_ms for r in runs[("events", "api", w)]],
                note=f"at {ours.rate:,.0f} requests/s",
            ),
            Figure(
                f"POST /PurchasedItems ({PURCHASES_PER_REQUEST} per request), {tag}",
                pu["api"].rate,
                "purchases/s",
                limit_name="framework floor (bare FastAPI, no Kafka)",
                limit_value=pu["floor"].rate,
                other_limits={
                    "naive peer": pu["naive"].rate,
                    "ours, journal off": pu["api-no-journal"].rate,
                    **(
                        {"Kafka client alone (16 senders x 100)": statistics.median(pu_client)}
                        if pu_client and w == 1
                        else {}
                    ),
                },
                target=">= 30,000/s or >= 0.6 of the floor",
                met=(pu["api"].rate >= 30_000 or pu["api"].rate >= 0.6 * pu["floor"].rate) and not problems,
                samples=pu["api"].samples,
                note=pu_note,
            ),
            Figure(
                f"PUT /SendEvent with the acknowledgement journal, {tag}",
                ours.rate,
                "requests/s",
                limit_name="the same API, journal off",
                limit_value=ev["api-no-journal"].rate,
                target="costs <= 20% of the requests/s",
                met=ev["api-no-journal"].rate > 0 and ours.rate >= 0.8 * ev["api-no-journal"].rate,
                samples=ours.samples,
                note="journal: one fdatasync per group of requests, then every record read back from the broker "
                "twice (SHOPSTREAM_API__JOURNAL)",
            ),
        ]
    figures.append(capture(settings, workers[0], min(seconds, CAPTURE_SECONDS), repeats))
    return figures
