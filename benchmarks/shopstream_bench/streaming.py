"""The streaming job: purchases/s from Kafka into Parquet on S3 beside the API's purchase rate,
freshness from the API's 2xx to a row readable in the lake, and the job's CPU at the default pace.

Needs: the Kafka broker and the S3 server (`isolated_stack(["kafka", "s3"])`), Spark's s3a jars
(`invoke setup`) and `wrk`. The API runs as the stack runs it (`ApiService`, a uvicorn subprocess).

Throughput, each repeat: the API is loaded by `wrk` (benchmarks/wrk/purchased_items.lua, 100
purchases per request, each request with a generated visitor's User-Agent and X-Forwarded-For,
as the API benchmark loads it) for a few seconds, and its purchases/s
(2xx x 100 / wrk's time) is noted; once the broker is quiet again (after a burst the embedded
broker rewrites its snapshot for a few seconds, ingest work that is not the job's), the job
(`job.start`, the project's Kafka source, default settings) runs with Trigger.AvailableNow over
exactly what the API published, into an output path and checkpoint of its own: purchases/s =
records / wall time from `job.start` until its query has finished, and the rate of its micro-
batches alone: records / the sum of their `triggerExecution` times (Spark's
processedRowsPerSecond over the run). The latter is what a running stream sustains: a query
starts once per process (the checkpoint and its outputs checked, the source set up, about 1.5 s
here), not once per batch. The rows are counted back afterwards (not timed). A short warm-up run
first, so the JVM, the Python workers and the s3a client are warm. The stream keeps up when its
batches' rate is at least the API's highest purchase rate in the same run; the rate from
`job.start` is shown beside it.

Other limits for throughput, same run. The job is read + validate + write; neither end alone
is the whole of it, so both ends are shown:
- librdkafka alone (confluent-kafka, the client the job's source reads with) reading the same
  records in one consumer: what getting the bytes off the broker costs in Python, with no
  Spark, no validation and no writing.
- a Spark batch writing the same rows as Parquet to the same bucket (read from the job's
  output, partitioned by date): the sink's cost with no Kafka and no validation.

Enrichment's share of the job, same run: the rows' ClientIp and UserAgent (each checked to be
a drawn visitor's) enriched again in this process as the job's check does, caches emptied
first, against the job's batch time for them; as the drain's share in the batch stage.

Freshness and CPU: the job runs as the stack runs it (`StreamingService`: its own process,
`python -m shopstream_streaming`, the default trigger interval, reading from the topic's end).
A sender posts one purchase at a time to POST /PurchasedItems at random moments, at the
generator's default pace on average (so the posts fall uniformly on the trigger's cycle), and
notes when the 2xx came back; a poller follows the output path as `spark.read.parquet` reads
it (the file sink's log: only committed batches count), reading each new file with pyarrow,
and notes when each OrderId first appears (the end of that poll: an upper bound).
Freshness = seen - 2xx; p95 per window, median over windows. Limit, same run: the p95 the
trigger and the job's median batch time (its status file) imply, 0.95 x max(interval, batch
time) + batch time: a record waits for the next batch to start, then for it to commit (the
reader's lag is not in it). Over the same windows, the job's CPU: psutil's CPU times of its
process, the JVM and the Python workers, per second of wall time (100% = one core busy).
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import psutil
from rich.console import Console

from shopstream.adapters.kafka import end_offsets
from shopstream.adapters.kafka_rd import rd_consumer
from shopstream.locations import PURCHASES, output_url, s3a_url
from shopstream.settings import Settings
from shopstream.streaming_status import read_status, status_path

from .api import (
    PURCHASE_CONNECTIONS,
    PURCHASES_PER_REQUEST,
    VISITORS,
    enrichment_seconds,
    foreign_envelopes,
    run_wrk,
)
from .dashboard_polling import cpu_seconds, listening_process
from .harness import Figure, percentile, spark_for

SERVERS = ["kafka", "s3"]
POLL_PAUSE_S = 0.2  # between the reader's polls
# purchases/s under the generator's default load (20 sessions/s), as `invoke up` runs it
DEFAULT_PACE = 8.0
CPU_TARGET = 0.2  # of one core, at that pace: the job used about 40% with two queries
console = Console()


def _job_settings(settings: Settings, tag: str, start: dict[int, int] | None, **streaming) -> Settings:
    """The settings with an output, quarantine and checkpoint of their own, reading from `start`
    (None: from where `settings` read)."""
    topic = settings.kafka.purchases_topic
    offsets = settings.streaming.starting_offsets
    if start is not None:
        offsets = json.dumps({topic: {str(p): o for p, o in start.items()}})
    st = settings.streaming.model_copy(
        update={
            "output_path": f"bench/{tag}/purchases",
            "quarantine_path": f"bench/{tag}/quarantine",
            "starting_offsets": offsets,
            **streaming,
        }
    )
    return settings.model_copy(update={"streaming": st})


def _available_now(spark, cfg: Settings, tries: int = 3) -> tuple[float, float, Settings]:
    """(seconds from `job.start` to the query done, seconds of its micro-batches, the settings
    of the run that finished): the job over what the topic holds from cfg's starting offsets.
    A run that fails for a reason the job itself restarts on (a busy machine: a Python worker
    that did not start within Spark's 10 s) is run again from scratch, into a new output, so
    the time is always that of one whole run."""
    from shopstream_streaming import job
    from shopstream_streaming.failures import is_transient
    from shopstream_streaming.restarts import error_text

    for attempt in range(tries):
        run = cfg if attempt == 0 else _job_settings(cfg, f"retry-{uuid.uuid4().hex[:8]}", None)
        t0 = time.perf_counter()
        q = job.start(spark, run, available_now=True)
        if not q.awaitTermination(1800):
            raise TimeoutError(f"query {q.name} did not finish")
        took = time.perf_counter() - t0
        error = q.exception()
        if error is None:
            return took, sum(p["durationMs"]["triggerExecution"] for p in q.recentProgress) / 1000, run
        if attempt == tries - 1 or not is_transient(error_text(error)):
            raise RuntimeError(f"query {q.name} failed: {error}")
        console.print(f"  [yellow]the run failed ({error_text(error).splitlines()[0][:120]}); again[/yellow]")
    raise AssertionError("unreachable")


def _settled_end(settings: Settings, timeout_s: float = 15) -> dict[int, int]:
    """The topic's end offsets once they stop moving (publishes still in flight land first)."""
    topic = settings.kafka.purchases_topic
    last, deadline = end_offsets(settings.kafka, topic), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = end_offsets(settings.kafka, topic)
        if now == last:
            break
        last = now
    return last


def _api_load(settings: Settings, seconds: float) -> tuple[float, dict[int, int], dict[int, int]]:
    """wrk against the running API, 100 purchases per request, as the API benchmark loads it:
    (purchases/s acknowledged, the topic's end offsets before, after)."""
    start = _settled_end(settings)
    r = run_wrk(
        settings.api.base_url,
        "purchased_items.lua",
        seconds,
        PURCHASE_CONNECTIONS,
        [uuid.uuid4().hex[:8], str(PURCHASES_PER_REQUEST)],
    )
    if r.not_ok or any(r.errors.values()):
        raise RuntimeError(f"wrk: {r.not_ok} non-2xx, socket errors {r.errors}")
    return r.ok_per_s * PURCHASES_PER_REQUEST, start, _settled_end(settings)


def _broker_quiet(settings: Settings, timeout_s: float = 60, busy: float = 0.1) -> float:
    """Seconds until the broker used less than `busy` of a core over one second (at most
    `timeout_s`). After a burst the embedded broker rewrites its snapshot for a few seconds
    at a full core (about 5 s after 600,000 purchases): ingest work, not the job's."""
    broker = listening_process(int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1]))
    t0 = time.perf_counter()
    last = cpu_seconds(broker)
    while time.perf_counter() - t0 < timeout_s:
        time.sleep(1)
        now = cpu_seconds(broker)
        if now - last < busy:
            break
        last = now
    return time.perf_counter() - t0


def _kafka_read(settings: Settings, start: dict[int, int], end: dict[int, int]) -> float:
    """Seconds for one librdkafka consumer (the client the source's tasks read with) to read
    [start, end) of every partition."""
    from confluent_kafka import TopicPartition

    topic = settings.kafka.purchases_topic
    consumer = rd_consumer(
        settings.kafka,
        **{"group.id": "shopstream-bench-read", "enable.auto.commit": False, "client.id": "shopstream-bench-read"},
    )
    try:
        t0 = time.perf_counter()
        consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
        got, need = 0, sum(end[p] - start[p] for p in start)
        while got < need:
            for r in consumer.consume(5000, timeout=1.0):
                at, p = r.offset(), r.partition()
                got += r.error() is None and at is not None and p is not None and at < end[p]
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"librdkafka read {got} of {need} records")
        return time.perf_counter() - t0
    finally:
        consumer.close()


def _envelopes(out) -> list[tuple[str | None, str | None]]:
    """Every row's (ClientIp, UserAgent), as the job read them from the records."""
    table = out.select("ClientIp", "UserAgent").toArrow()
    return list(zip(table.column("ClientIp").to_pylist(), table.column("UserAgent").to_pylist(), strict=True))


def throughput(spark, settings: Settings, seconds: float, repeats: int) -> list[Figure]:
    from shopstream_stack.apps import ApiService

    api = ApiService(settings)
    api.start()
    api_rates, job_s, batch_s, read_s, write_s, counts, problems = [], [], [], [], [], [], []
    quiet_s: list[float] = []
    enrich_s: list[float] = []  # enriching each run's rows in one process, caches cold
    senders: list[int] = []  # distinct envelopes among them
    try:
        console.print("  warm-up: wrk 2 s, then the job over those purchases (JVM, Python workers, s3a)")
        _, start, end = _api_load(settings, 2)
        _available_now(spark, _job_settings(settings, f"warm-{uuid.uuid4().hex[:6]}", start))
        for i in range(repeats):
            rate, start, end = _api_load(settings, seconds)
            n = sum(end.values()) - sum(start.values())
            quiet_s.append(_broker_quiet(settings))
            took, batches, cfg = _available_now(spark, _job_settings(settings, f"tp-{uuid.uuid4().hex[:8]}", start))
            api_rates.append(rate)
            counts.append(n)
            job_s.append(took)
            batch_s.append(batches)
            out = spark.read.parquet(output_url(cfg))
            rows = out.count()
            if rows != n:
                problems.append(f"run {i + 1}: {rows:,} rows for {n:,} purchases")
            envelopes = _envelopes(out)
            if wrong := foreign_envelopes(envelopes):
                problems.append(f"run {i + 1}: {len(wrong):,} envelopes no visitor sent, e.g. {min(wrong, key=str)}")
            senders.append(len(set(envelopes)))
            enrich_s.append(enrichment_seconds(envelopes))
            read_s.append(_kafka_read(settings, start, end))
            t0 = time.perf_counter()
            out.write.partitionBy("date").mode("overwrite").parquet(s3a_url(cfg, f"bench/{uuid.uuid4().hex[:8]}/copy"))
            write_s.append(time.perf_counter() - t0)
            console.print(
                f"  run {i + 1}/{repeats}: API {rate:,.0f} purchases/s (wrk {seconds:g} s, {n:,} purchases; "
                f"the broker busy {quiet_s[-1]:.0f} s after); "
                f"job {n / batch_s[-1]:,.0f} purchases/s in its batches ({batch_s[-1]:.1f} s), "
                f"{n / job_s[-1]:,.0f}/s from its start ({job_s[-1]:.1f} s), librdkafka {n / read_s[-1]:,.0f}/s, "
                f"Parquet batch write {n / write_s[-1]:,.0f}/s; enriching them {enrich_s[-1]:.2f} s "
                f"({senders[-1]:,} senders)"
            )
    finally:
        api.stop()
    rates = [n / s for n, s in zip(counts, batch_s, strict=True)]
    rate, api_top = statistics.median(rates), max(api_rates)
    from_start = statistics.median(n / s for n, s in zip(counts, job_s, strict=True))
    read_rate = statistics.median(n / s for n, s in zip(counts, read_s, strict=True))
    write_rate = statistics.median(n / s for n, s in zip(counts, write_s, strict=True))
    note = (
        f"the API loaded by wrk -c{PURCHASE_CONNECTIONS}, {PURCHASES_PER_REQUEST} purchases per request, "
        f"{seconds:g} s per run (API purchases/s per run: {', '.join(f'{r:,.0f}' for r in api_rates)}); then the job "
        f"over exactly those {statistics.median(counts):,.0f} purchases (median), once the broker had finished "
        f"its own work after the load ({', '.join(f'{q:.0f}' for q in quiet_s)} s): Trigger.AvailableNow, master "
        f"{settings.spark.master}, source {settings.streaming.kafka_source}, max "
        f"{settings.streaming.max_records_per_trigger:,} per batch; purchases / the batches' triggerExecution "
        "times (the query's start, paid once per process, left out; the rate from job.start to the query done "
        "is beside it). " + ("; ".join(problems) if problems else "Every purchase written once.")
    )
    tp = Figure(
        "streaming Kafka -> Parquet, the API's purchases",
        rate,
        "purchases/s",
        limit_name="the API's highest purchase rate, same run",
        limit_value=api_top,
        other_limits={
            "the job from its start (query start included)": from_start,
            "librdkafka alone reading them": read_rate,
            "Spark batch writing the same rows as Parquet": write_rate,
        },
        target=">= the API's purchase rate; every purchase written once",
        met=rate >= api_top and not problems,
        samples=rates,
        note=note,
    )
    share = Figure(
        f"enrichment's share of the streaming job ({statistics.median(counts):,.0f} purchases, "
        f"{statistics.median(senders):,.0f} senders)",
        statistics.median(enrich_s),
        "s",
        limit_name="the job's micro-batches for them, same run",
        limit_value=statistics.median(batch_s),
        target="<= 0.1 (enrichment takes at most 10% of the job's throughput)",
        met=statistics.median(enrich_s) <= 0.1 * statistics.median(batch_s) and not problems,
        samples=enrich_s,
        note="what the job adds per record to read its envelope (user agent, GeoLite2 city) as its check does "
        "(`enrichment_fields`), timed in one process over each run's rows, caches emptied first (each of the "
        "job's Python workers keeps its caches from batch to batch, so this is an upper bound), against the sum "
        "of the same run's triggerExecution times (on 2 cores: enrichment's CPU against the job's wall time). The "
        f"purchases came through the API from wrk, each request with the User-Agent and X-Forwarded-For of one of "
        f"{VISITORS:,} visitors drawn as the generator draws them; every row's ClientIp and UserAgent checked "
        "against them. " + ("; ".join(problems) if problems else "Every purchase written once."),
    )
    return [tp, share]


def _purchase(tag: str, i: int) -> dict:
    a, b = 1 + i % 300, 1 + (i * 7) % 200
    return {
        "SessionId": f"sess-{tag}-{i}",
        "TimeStamp": datetime.now(UTC).isoformat(),
        "UserId": f"user-{i % 997}",
        "TotalPrice": 2 * a + b,
        "OrderId": f"order-{tag}-{i}",
        "PaymentType": "CreditCard",
        "Products": [
            {"ProductId": f"sku-{i % 5000:05d}", "ItemCount": 2, "ItemPrice": a + 0.5, "ItemDiscount": 0.5},
            {"ProductId": f"sku-{(i * 31) % 5000:05d}", "ItemCount": 1, "ItemPrice": b + 0.25, "ItemDiscount": 0.25},
        ],
    }


class _Poller:
    """Follows the job's output as a reader does and notes when each OrderId was first readable.

    It reads the file sink's `_spark_metadata` log (the rule `spark.read.parquet` applies:
    only committed files count) and each newly committed file once, with pyarrow: a reader
    that costs milliseconds, so it neither slows the job on the shared cores nor adds its
    own seconds to what is measured."""

    def __init__(self, settings: Settings, prefix: str) -> None:
        from shopstream.adapters.lake import LakeFiles
        from shopstream.adapters.s3 import s3_client

        self.lake, self.prefix = LakeFiles(s3_client(settings.s3), settings), prefix
        self.read: set[str] = set()
        self.seen: dict[str, float] = {}
        self.poll_s: list[float] = []

    def poll(self) -> None:
        t0 = time.time()
        new = self.lake.committed() - self.read
        table = self.lake.read(new)
        t1 = time.time()
        self.poll_s.append(t1 - t0)
        self.read |= new
        for order in table.column("OrderId").to_pylist() if table is not None else []:
            if order.startswith(self.prefix):
                self.seen.setdefault(order, t1)

    def until(self, ids, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if all(i in self.seen for i in ids):
                return True
            time.sleep(POLL_PAUSE_S)
        return False


def _family_cpu_seconds(leader: psutil.Process) -> dict[int, float]:
    """CPU seconds (user + system) so far of the job's process and everything it started (the
    JVM, the Python workers), by pid."""
    from shopstream_stack.process import Proc

    out = {}
    for p in [leader, *Proc.family(leader)]:
        with contextlib.suppress(psutil.Error):
            out[p.pid] = cpu_seconds(p)
    return out


def freshness(settings: Settings, window_s: float, windows: int, trigger_s: float, pace: float) -> list[Figure]:
    from shopstream_stack.apps import ApiService
    from shopstream_stack.streaming import StreamingService

    topic = settings.kafka.purchases_topic
    tag = f"fresh-{uuid.uuid4().hex[:8]}"
    cfg = _job_settings(settings, tag, end_offsets(settings.kafka, topic), trigger_interval_s=trigger_s)
    api, job = ApiService(settings), StreamingService(cfg)
    closing: list = []
    batches: dict[int, float] = {}  # batch id -> ms, batches with records (the job's status file)
    try:
        api.start()
        job.start()  # as the stack runs it: its own process, healthy once its query made progress
        leader = psutil.Process(job.procs()[0].pid())
        url = output_url(cfg)
        poller = _Poller(cfg, f"order-{tag}-")
        client = httpx.Client(base_url=settings.api.base_url, timeout=30)
        closing.append(client)
        acked: dict[str, float] = {}
        counter = iter(range(10**9))

        def post_one() -> str:
            i = next(counter)
            body = _purchase(tag, i)
            r = client.post("/PurchasedItems", json=[body])
            r.raise_for_status()
            acked[body["OrderId"]] = time.time()
            return body["OrderId"]

        def batch_times() -> None:
            q = ((read_status(status_path(cfg)) or {}).get("queries") or {}).get(PURCHASES) or {}
            if q.get("input_rows") and q.get("batch_id") is not None and q.get("batch_ms") is not None:
                batches[q["batch_id"]] = q["batch_ms"]

        console.print("  warm-up: the first purchase through API, job and reader")
        first = post_one()
        if not poller.until([first], 180):
            raise TimeoutError("the first purchase never became readable")
        acked.pop(first)

        p95s, samples, cpu_shares = [], [], []
        for w in range(windows):
            sent: list[str] = []
            stop = threading.Event()

            def sender(sent: list[str], stop: threading.Event) -> None:
                # one purchase at a time at `pace` per second on average, at random moments (so
                # the posts fall uniformly on the trigger's cycle)
                end = time.monotonic() + window_s
                while time.monotonic() < end and not stop.is_set():
                    sent.append(post_one())
                    time.sleep(random.uniform(0, 2 / pace))

            cpu0, t0 = _family_cpu_seconds(leader), time.monotonic()
            t = threading.Thread(target=sender, args=(sent, stop), daemon=True)
            t.start()
            while t.is_alive():
                poller.poll()
                batch_times()
                time.sleep(POLL_PAUSE_S)
            stop.set()
            cpu1, t1 = _family_cpu_seconds(leader), time.monotonic()
            cpu_shares.append(sum(v - cpu0.get(pid, 0.0) for pid, v in cpu1.items()) / (t1 - t0))
            if not poller.until(sent, 120):
                missing = [i for i in sent if i not in poller.seen]
                raise TimeoutError(f"{len(missing)} purchases were not readable 120 s after the window")
            fresh = [poller.seen[i] - acked[i] for i in sent]
            samples += fresh
            p95s.append(percentile(fresh, 95))
            console.print(
                f"  window {w + 1}/{windows}: {len(sent)} purchases ({len(sent) / (t1 - t0):.1f}/s), freshness p50 "
                f"{percentile(fresh, 50):.2f} s, p95 {p95s[-1]:.2f} s, max {max(fresh):.2f} s; the job used "
                f"{cpu_shares[-1]:.0%} of a core"
            )
    finally:
        for c in closing:
            c.close()
        job.stop()
        api.stop()
    batch_ms = list(batches.values())
    batch_s = statistics.median(batch_ms) / 1000 if batch_ms else float("nan")
    # a record waits for the next batch to start (uniform over max(trigger, batch time): a batch
    # longer than the interval starts the next one at once), then for that batch to commit
    floor = 0.95 * max(trigger_s, batch_s) + batch_s
    p95 = statistics.median(p95s)
    note = (
        f"trigger_interval_s = {trigger_s:g} (processing time); {len(samples)} purchases posted one at a time, "
        f"{pace:g}/s on average (the generator's default pace), over {windows} x {window_s:g} s; p95 per window, "
        f"median of windows; readable = first seen by a reader of {url} following the sink's log "
        f"(median poll {statistics.median(poller.poll_s):.2f} s, counted in, "
        f"{POLL_PAUSE_S:g} s between polls); median batch {batch_s:.2f} s ({len(batch_ms)} batches with data seen)"
    )
    cpu = statistics.median(cpu_shares)
    return [
        Figure(
            "streaming freshness p95 (API 2xx -> readable in Parquet)",
            p95,
            "s",
            limit_name=f"p95 the trigger ({trigger_s:g} s) and batch time imply",
            limit_value=floor,
            target="<= 10 s",
            met=p95 <= 10,
            samples=p95s,
            note=note,
        ),
        Figure(
            f"streaming job CPU at the default pace ({pace:g} purchases/s)",
            100 * cpu,
            "% of a core",
            target=f"<= {CPU_TARGET:.0%} of a core",
            met=cpu <= CPU_TARGET,
            samples=[100 * c for c in cpu_shares],
            note=f"the job as the stack runs it (`python -m shopstream_streaming`): CPU time of its process, the "
            f"JVM and the Python workers (psutil) over each {window_s:g} s window, per second of wall time; "
            "median of windows",
        ),
    ]


def run(
    settings: Settings,
    quick: bool = False,
    load_s: float | None = None,
    repeats: int | None = None,
    freshness_window_s: float | None = None,
    freshness_windows: int | None = None,
    trigger_s: float | None = None,
    pace: float = DEFAULT_PACE,
) -> list[Figure]:
    trigger_s = trigger_s or settings.streaming.trigger_interval_s
    load_s = load_s or (3 if quick else 10)
    repeats = repeats or (2 if quick else 3)
    window_s = freshness_window_s or (20 if quick else 60)
    windows = freshness_windows or (1 if quick else 2)
    console.print(
        f"[bold]streaming[/bold]: the API loaded by wrk for {load_s:g} s, then the job over those purchases, "
        f"x {repeats}; freshness and the job's CPU at {pace:g} purchases/s, {windows} x {window_s:g} s, "
        f"with a {trigger_s:g} s trigger"
    )
    with spark_for(settings, "shopstream-bench-streaming") as spark:
        figures = throughput(spark, settings, load_s, repeats)
    figures += freshness(settings, window_s, windows, trigger_s, pace)
    return figures
