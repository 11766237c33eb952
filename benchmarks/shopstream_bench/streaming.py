"""The streaming job: purchases/s from Kafka into Parquet on S3, and freshness from the API's 2xx
to a row readable in the lake.

Needs: the Kafka broker and the S3 server (`isolated_stack(["kafka", "s3"])`), and Spark's s3a
jars (`invoke setup`). The API runs as a uvicorn subprocess (as `ApiService` runs it) for the
freshness part.

Throughput: PurchasedItem is filled with N valid purchases (pre-serialised `PurchaseRecord`
JSON, as the API publishes them); each repeat runs the job (`job.start`, both queries, the
project's Kafka source, default settings) with Trigger.AvailableNow over exactly those N
records into an output path and checkpoint of its own: purchases/s = N / wall time from
`job.start` until both queries have finished. The rows are counted back afterwards (not timed).
A short warm-up run first, so the JVM, the Python workers and the s3a client are warm.

Limits for throughput, same run. The job is read + validate + write; neither end alone is the
whole of it, so both ends are measured and shown:
- main: kafka-python alone (the library the job's source is built on) reading the same N
  records in one consumer: what getting the bytes off the broker costs in Python, with no
  Spark, no validation and no writing. The job reads the topic twice (its two queries).
- other: a Spark batch writing the same rows as Parquet to the same bucket (read from the
  job's output, partitioned by date): the sink's cost with no Kafka and no validation.

Freshness: the job runs with its normal processing-time trigger, `trigger_interval_s` =
the job's default trigger interval (settings.streaming.trigger_interval_s: what a user gets), reading
from the topic's end. A sender posts one purchase at a time to POST /PurchasedItems at
random intervals (0.3-0.7 s, so the posts fall uniformly on the trigger's cycle) and notes
when the 2xx came back; a poller follows the output path as `spark.read.parquet` reads it
(the file sink's log: only committed batches count), reading each new file with pyarrow,
and notes when each OrderId first appears (the end of that poll: an upper bound). An
earlier version polled with `spark.read.parquet` in the job's own local[2] Spark: each poll
took about 2 s and slowed the job it watched, so it measured the reader more than the job.
Freshness = seen - 2xx; p95 per window, median over windows. Limit, same run: the p95 the
trigger and the job's median batch time (its own progress reports) imply, 0.95 x
max(interval, batch time) + batch time: a record waits for the next batch to start, then
for it to commit (the reader's lag is not in it).
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
from rich.console import Console

from shopstream.adapters.kafka import end_offsets, kafka_consumer
from shopstream.locations import PURCHASES, output_url, s3a_url
from shopstream.settings import Settings

from .api import purchase_records
from .harness import Figure, percentile, produce, spark_for

SERVERS = ["kafka", "s3"]
POLL_PAUSE_S = 0.2  # between the reader's polls
console = Console()


def _job_settings(settings: Settings, tag: str, start: dict[int, int], **streaming) -> Settings:
    topic = settings.kafka.purchases_topic
    st = settings.streaming.model_copy(
        update={
            "output_path": f"bench/{tag}/purchases",
            "quarantine_path": f"bench/{tag}/quarantine",
            "starting_offsets": json.dumps({topic: {str(p): o for p, o in start.items()}}),
            **streaming,
        }
    )
    return settings.model_copy(update={"streaming": st})


def _available_now(spark, cfg: Settings) -> float:
    from shopstream_streaming import job

    t0 = time.perf_counter()
    queries = job.start(spark, cfg, available_now=True)
    for q in queries:
        if not q.awaitTermination(1800):
            raise TimeoutError(f"query {q.name} did not finish")
        if q.exception() is not None:
            raise RuntimeError(f"query {q.name} failed: {q.exception()}")
    return time.perf_counter() - t0


def _kafka_python_read(settings: Settings, start: dict[int, int], end: dict[int, int]) -> float:
    """Seconds for one kafka-python consumer to read [start, end) of every partition."""
    from kafka import TopicPartition

    topic = settings.kafka.purchases_topic
    consumer = kafka_consumer(
        settings.kafka, enable_auto_commit=False, client_id="shopstream-bench-read", max_poll_records=5000
    )
    tps = [TopicPartition(topic, p) for p in start]
    try:
        t0 = time.perf_counter()
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        got, need = 0, sum(end[p] - start[p] for p in start)
        while got < need:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                got += sum(1 for r in records if r.offset < end[tp.partition] and r.value is not None)
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"kafka-python read {got} of {need} records")
        return time.perf_counter() - t0
    finally:
        consumer.close()


def throughput(spark, settings: Settings, n: int, repeats: int) -> Figure:
    topic = settings.kafka.purchases_topic
    warm_start = end_offsets(settings.kafka, topic)
    produce(settings, topic, purchase_records(500, f"warm{uuid.uuid4().hex[:6]}"), "warm-up purchases")
    console.print("  warm-up run (JVM, Python workers, s3a)")
    _available_now(spark, _job_settings(settings, f"warm-{uuid.uuid4().hex[:6]}", warm_start))

    start = end_offsets(settings.kafka, topic)
    produce(settings, topic, purchase_records(n, f"tp{uuid.uuid4().hex[:6]}"), f"filling {topic} with {n:,} purchases")
    end = end_offsets(settings.kafka, topic)
    assert sum(end.values()) - sum(start.values()) == n
    job_s, read_s, write_s, problems = [], [], [], []
    for i in range(repeats):
        cfg = _job_settings(settings, f"tp-{uuid.uuid4().hex[:8]}", start)
        job_s.append(_available_now(spark, cfg))
        out = spark.read.parquet(output_url(cfg))
        rows = out.count()
        if rows != n:
            problems.append(f"run {i + 1}: {rows:,} rows for {n:,} purchases")
        read_s.append(_kafka_python_read(settings, start, end))
        t0 = time.perf_counter()
        out.write.partitionBy("date").mode("overwrite").parquet(s3a_url(cfg, f"bench/{uuid.uuid4().hex[:8]}/copy"))
        write_s.append(time.perf_counter() - t0)
        console.print(
            f"  run {i + 1}/{repeats}: job {n / job_s[-1]:,.0f} purchases/s ({job_s[-1]:.1f} s), "
            f"kafka-python {n / read_s[-1]:,.0f}/s, Parquet batch write {n / write_s[-1]:,.0f}/s"
        )
    rate = n / statistics.median(job_s)
    read_rate, write_rate = n / statistics.median(read_s), n / statistics.median(write_s)
    note = (
        f"{n:,} purchases, Trigger.AvailableNow, master {settings.spark.master}, source "
        f"{settings.streaming.kafka_source}, max {settings.streaming.max_records_per_trigger:,} per batch; "
        "wall time from job.start to both queries done. "
        + ("; ".join(problems) if problems else "Every purchase written once.")
    )
    return Figure(
        f"streaming Kafka -> Parquet ({n:,} purchases)",
        rate,
        "purchases/s",
        limit_name="kafka-python alone reading them",
        limit_value=read_rate,
        other_limits={"Spark batch writing the same rows as Parquet": write_rate},
        target="every purchase written once (no speed target)",
        met=not problems,
        samples=[n / s for s in job_s],
        note=note,
    )


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


def freshness(spark, settings: Settings, window_s: float, windows: int, trigger_s: float) -> Figure:
    from shopstream_stack.apps import ApiService
    from shopstream_streaming import job

    topic = settings.kafka.purchases_topic
    tag = f"fresh-{uuid.uuid4().hex[:8]}"
    cfg = _job_settings(settings, tag, end_offsets(settings.kafka, topic), trigger_interval_s=trigger_s)
    api = ApiService(settings)
    api.start()
    queries, closing = [], []
    try:
        queries = job.start(spark, cfg, available_now=False)
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

        console.print("  warm-up: the first purchase through API, job and reader")
        first = post_one()
        if not poller.until([first], 180):
            raise TimeoutError("the first purchase never became readable")
        acked.pop(first)

        p95s, samples = [], []
        for w in range(windows):
            sent: list[str] = []
            stop = threading.Event()

            def sender(sent: list[str], stop: threading.Event) -> None:
                end = time.monotonic() + window_s
                while time.monotonic() < end and not stop.is_set():
                    sent.append(post_one())
                    time.sleep(random.uniform(0.3, 0.7))

            t = threading.Thread(target=sender, args=(sent, stop), daemon=True)
            t.start()
            while t.is_alive():
                poller.poll()
                time.sleep(POLL_PAUSE_S)
            stop.set()
            if not poller.until(sent, 120):
                missing = [i for i in sent if i not in poller.seen]
                raise TimeoutError(f"{len(missing)} purchases were not readable 120 s after the window")
            fresh = [poller.seen[i] - acked[i] for i in sent]
            samples += fresh
            p95s.append(percentile(fresh, 95))
            console.print(
                f"  window {w + 1}/{windows}: {len(sent)} purchases, freshness p50 "
                f"{percentile(fresh, 50):.2f} s, p95 {p95s[-1]:.2f} s, max {max(fresh):.2f} s"
            )
        batch_ms = [
            p["durationMs"].get("triggerExecution", 0)
            for q in queries
            for p in q.recentProgress
            if q.name == PURCHASES and p["numInputRows"]
        ]
    finally:
        for c in closing:
            c.close()
        for q in queries:
            q.stop()
        api.stop()
    batch_s = statistics.median(batch_ms) / 1000 if batch_ms else float("nan")
    # a record waits for the next batch to start (uniform over max(trigger, batch time): a batch
    # longer than the interval starts the next one at once), then for that batch to commit
    floor = 0.95 * max(trigger_s, batch_s) + batch_s
    p95 = statistics.median(p95s)
    note = (
        f"trigger_interval_s = {trigger_s:g} (processing time); {len(samples)} purchases posted one at a time over "
        f"{windows} x {window_s:g} s; p95 per window, median of windows; readable = first seen by "
        f"a reader of {url} following the sink's log "
        f"(median poll {statistics.median(poller.poll_s):.2f} s, counted in, "
        f"{POLL_PAUSE_S:g} s between polls); "
        f"median batch {batch_s:.2f} s ({len(batch_ms)} batches with data)"
    )
    return Figure(
        "streaming freshness p95 (API 2xx -> readable in Parquet)",
        p95,
        "s",
        limit_name=f"p95 the trigger ({trigger_s:g} s) and batch time imply",
        limit_value=floor,
        target="<= 10 s",
        met=p95 <= 10,
        samples=p95s,
        note=note,
    )


def run(
    settings: Settings,
    quick: bool = False,
    purchases: int | None = None,
    repeats: int | None = None,
    freshness_window_s: float | None = None,
    freshness_windows: int | None = None,
    trigger_s: float | None = None,
) -> list[Figure]:
    trigger_s = trigger_s or settings.streaming.trigger_interval_s
    n = purchases or (10_000 if quick else 100_000)
    repeats = repeats or (2 if quick else 3)
    window_s = freshness_window_s or (15 if quick else 40)
    windows = freshness_windows or (1 if quick else 3)
    console.print(
        f"[bold]streaming[/bold]: {n:,} purchases Kafka -> Parquet x {repeats}; freshness "
        f"{windows} x {window_s:g} s with a {trigger_s:g} s trigger"
    )
    with spark_for(settings, "shopstream-bench-streaming") as spark:
        figures = [throughput(spark, settings, n, repeats)]
        figures.append(freshness(spark, settings, window_s, windows, trigger_s))
    return figures
