"""The Spark streaming job against the real broker and S3 server: posted purchases come
back from Parquet field for field, exactly once across a kill -9, and what is not a
purchase lands in quarantine with the reason."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path

import httpx
import psutil
import pytest
from kafka import KafkaProducer
from pydantic import BaseModel, Field
from pyspark.sql import types as T

from conftest import end_offsets, job_settings, read_from, run_until_caught_up
from shopstream import locations
from shopstream.contracts import PaymentType, ProductLine, PurchaseRecord
from shopstream.contracts.spark import spark_schema
from shopstream.settings import Settings
from shopstream.streaming_status import read_status, status_path
from shopstream_api.examples import PURCHASE_EXAMPLE
from shopstream_stack.process import Proc
from shopstream_stack.streaming import StreamingService
from shopstream_streaming import job
from shopstream_streaming.status import rows_written
from test_enrichment import CHROME_WINDOWS

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack")]

MONEY = T.DecimalType(9, 2)
COORDINATES = ["KafkaTopic", "KafkaPartition", "KafkaOffset", "KafkaTimestamp"]


def purchase(run: str, i: int) -> dict:
    """A valid purchase with 1-3 lines, cents, an offset timestamp, and a total that adds up."""
    lines = [
        {
            "ProductId": f"sku-{i}-{n}",
            "ItemCount": 1 + (i + n) % 4,
            "ItemPrice": float(Decimal(f"{(i * 37 + n * 11) % 900 + 1}.{(i + n) % 100:02d}")),
            "ItemDiscount": float(Decimal(f"0.{(i * 7 + n) % 100:02d}")),
        }
        for n in range(1 + i % 3)
    ]
    total = sum(
        Decimal(str(x["ItemCount"])) * (Decimal(str(x["ItemPrice"])) - Decimal(str(x["ItemDiscount"]))) for x in lines
    )
    stamp = datetime(2026, 11, 22, 10, 0, tzinfo=UTC) + timedelta(seconds=i, microseconds=i * 1001)
    if i % 2:  # the contract keeps instants, whatever offset the client wrote them in
        stamp = stamp.astimezone(timezone(timedelta(hours=2)))
    return {
        "SessionId": f"sess-{run}-{i}",
        "UserId": f"user-{run}-{i % 7}",
        "OrderId": f"order-{run}-{i}",
        "TimeStamp": stamp.isoformat(),
        "TotalPrice": float(total),
        "Products": lines,
        "PaymentType": list(PaymentType)[i % len(PaymentType)].value,
    }


# the sender every test purchase comes from (the API trusts the tests' X-Forwarded-For)
SENDER = {"X-Forwarded-For": "81.2.69.160", "User-Agent": CHROME_WINDOWS}


def post(api_url: str, bodies: list[dict], key: str | None) -> list[str]:
    headers = {**SENDER, **({"Idempotency-Key": key} if key else {})}
    r = httpx.post(f"{api_url}/PurchasedItems", json=bodies, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["EventIds"]


def as_utc(naive_local: datetime) -> datetime:
    """Spark hands timestamps to Python as naive local times."""
    return naive_local.astimezone(UTC)


def test_posted_purchases_come_back_from_parquet_field_for_field(spark, settings, api_server):
    st = job_settings(settings, "roundtrip")
    since = {int(p): o for p, o in json.loads(st.streaming.starting_offsets)[settings.kafka.purchases_topic].items()}
    run = uuid.uuid4().hex[:6]
    extremes = {
        **purchase(run, 99),
        "TotalPrice": 1_000_000.0,
        "Products": [  # money at both ends of its range
            {"ProductId": "sku-max", "ItemCount": 1, "ItemPrice": 1_000_000.0, "ItemDiscount": 0.01},
            {"ProductId": "sku-min", "ItemCount": 1, "ItemPrice": 0.01, "ItemDiscount": 0.0},
        ],
    }
    bodies = [purchase(run, i) for i in range(11)] + [extremes]
    key = f"checkout-{run}"
    ids = post(api_server.url, bodies[:8], key) + post(api_server.url, bodies[8:], None)
    assert post(api_server.url, bodies[:8], key) == ids[:8]  # a client retry: same EventIds again
    copies: dict[str, list] = {}
    for m in read_from(settings, settings.kafka.purchases_topic, since):
        copies.setdefault(json.loads(m.value)["EventId"], []).append(m)
    assert sorted(len(c) for c in copies.values()) == [1] * 4 + [2] * 8  # the topic has the retry's copies

    run_until_caught_up(spark, st)

    df = spark.read.parquet(locations.output_url(st))
    contract = spark_schema(PurchaseRecord)
    assert df.columns == [*contract.fieldNames(), "Enrichment", *COORDINATES, "date"]
    # the same types (Parquet itself makes every column nullable)
    assert df.schema.simpleString().startswith(contract.simpleString()[:-1])
    rows = df.collect()
    by_id = {r.EventId: r for r in rows}
    assert len(rows) == len(by_id) == 12 and set(by_id) == set(ids)
    for body, event_id in zip(bodies, ids, strict=True):
        row = by_id[event_id]
        assert row.SessionId == body["SessionId"] and row.UserId == body["UserId"] and row.OrderId == body["OrderId"]
        assert row.PaymentType == body["PaymentType"]
        assert row.TotalPrice == Decimal(str(body["TotalPrice"])).quantize(Decimal("0.01"))
        assert as_utc(row.TimeStamp) == datetime.fromisoformat(body["TimeStamp"]).astimezone(UTC)
        assert [p.asDict() for p in row.Products] == [
            {
                "ProductId": p["ProductId"],
                "ItemCount": p["ItemCount"],
                "ItemPrice": Decimal(str(p["ItemPrice"])).quantize(Decimal("0.01")),
                "ItemDiscount": Decimal(str(p["ItemDiscount"])).quantize(Decimal("0.01")),
            }
            for p in body["Products"]
        ]
        # the Kafka copy it came from: coordinates and the server's IngestedAt agree
        (m,) = [m for m in copies[event_id] if (m.partition, m.offset) == (row.KafkaPartition, row.KafkaOffset)]
        assert row.KafkaTopic == m.topic == settings.kafka.purchases_topic
        assert as_utc(row.KafkaTimestamp) == datetime.fromtimestamp(m.timestamp / 1000, UTC)
        ingested = datetime.fromisoformat(json.loads(m.value)["IngestedAt"])
        assert as_utc(row.IngestedAt) == ingested and row.date == ingested.date()
        # the envelope as the API captured it (the address truncated), enriched beside it
        assert (row.ClientIp, row.UserAgent) == ("81.2.69.0", CHROME_WINDOWS)
        assert row.Enrichment.asDict() == {
            "Browser": "Chrome",
            "Os": "Windows",
            "Device": "desktop",
            "IsBot": False,
            "Country": "GB",
            "Region": "England",
            "City": "Willesden",
        }


def test_malformed_and_contract_breaking_records_land_in_quarantine_with_the_reason(spark, settings):
    st = job_settings(settings, "quarantine", own_topic=True)
    topic = st.kafka.purchases_topic
    good = {**PURCHASE_EXAMPLE, "EventId": f"ok-{uuid.uuid4().hex}", "IngestedAt": "2026-11-22T10:21:31.5Z"}
    bad = {  # value -> what the reason must say
        b"{not json": "Invalid JSON",
        b"\xff\xfe\x00 not UTF-8": "Invalid JSON",
        json.dumps({**good, "TotalPrice": 1.0}).encode(): "TotalPrice must equal the lines' total",
        json.dumps({**good, "Coupon": "FREE"}).encode(): "Coupon: Extra inputs are not permitted",
        json.dumps(PURCHASE_EXAMPLE).encode(): "EventId: Field required",
        json.dumps(
            {**good, "Products": [{**PURCHASE_EXAMPLE["Products"][0], "ItemCount": 0}]}
        ).encode(): "Products.0.ItemCount",
        None: "empty record",
    }
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    sent = {value: producer.send(topic, key=b"user-q", value=value).get(10) for value in bad}
    ok = producer.send(topic, key=b"user-q", value=json.dumps(good).encode()).get(10)
    producer.close()

    progress = run_until_caught_up(spark, st)
    written = {
        name: sum((rows_written(p) or {}).get(name, 0) for p in progress)
        for name in (locations.PURCHASES, locations.QUARANTINE)
    }
    assert written == {locations.PURCHASES: 1, locations.QUARANTINE: len(bad)}  # what the job logs per batch

    quarantine = {
        (r.KafkaPartition, r.KafkaOffset): r for r in spark.read.parquet(locations.quarantine_url(st)).collect()
    }
    assert len(quarantine) == len(bad)
    for value, reason in bad.items():
        row = quarantine[(sent[value].partition, sent[value].offset)]
        assert reason in row.Reason, row.Reason
        assert row.Value == value and row.Key == b"user-q" and row.KafkaTopic == topic
        assert row.date == as_utc(row.KafkaTimestamp).date()
    (kept,) = spark.read.parquet(locations.output_url(st)).collect()
    assert (kept.EventId, kept.KafkaPartition, kept.KafkaOffset) == (good["EventId"], ok.partition, ok.offset)


def test_a_new_checkpoint_over_old_output_is_refused(spark, settings):
    """Spark's file sink would skip the batch numbers the output already has: silent loss."""
    st = job_settings(settings, "mismatch", own_topic=True)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers)
    producer.send(st.kafka.purchases_topic, value=b"x").get(10)
    producer.close()
    run_until_caught_up(spark, st)
    moved = st.model_copy(
        update={
            "streaming": st.streaming.model_copy(
                update={"checkpoint_location": str(settings.run_dir / f"elsewhere-{uuid.uuid4().hex}")}
            )
        }
    )
    with pytest.raises(job.CheckpointMismatch, match="delete the output and the checkpoint together"):
        job.start(spark, moved)
    assert not spark.streams.active


# -- exactly once across kill -9 ---------------------------------------------------------
class Poster(threading.Thread):
    """A client posting purchases through the API without pause; every 4th request is sent
    twice with its Idempotency-Key (a retry after a lost answer), so Kafka holds copies."""

    def __init__(self, api_url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.run_id = api_url, uuid.uuid4().hex[:6]
        self.accepted: set[str] = set()
        self.requests = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                bodies = [purchase(self.run_id, i * 5 + j) for j in range(5)]
                for _ in range(2 if i % 4 == 0 else 1):
                    self.accepted.update(post(self.url, bodies, f"{self.run_id}-{i}"))
                    self.requests += 1
                i += 1
                time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def batches(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.glob("[0-9]*")) if folder.exists() else []


def batch_offsets(checkpoint: Path, batch: int, topic: str) -> dict[str, int]:
    return json.loads((checkpoint / "offsets" / str(batch)).read_text().splitlines()[2])[topic]


def unlisted_files(settings: Settings) -> set[str]:
    """Parquet files in the output that the file sink's log does not list (yet)."""
    from shopstream.adapters.s3 import s3_client

    s3, bucket = s3_client(settings.s3), settings.s3.bucket
    names = [
        o.object_name for o in s3.list_objects(bucket, prefix=f"{settings.streaming.output_path}/", recursive=True)
    ]
    listed = set()
    # the log's entries, not the temporary files it writes them through (`.<batch>.<uuid>.tmp`,
    # renamed away at any moment)
    for name in (n for n in names if "/_spark_metadata/" in n and not n.rsplit("/", 1)[1].startswith(".")):
        response = s3.get_object(bucket, name)
        listed |= {json.loads(line)["path"].split(f"/{bucket}/", 1)[1] for line in response.read().splitlines()[1:]}
        response.close()
    return {n for n in names if n.endswith(".parquet")} - listed


def kill_minus_9(pid: int) -> None:
    """SIGKILL the job and everything it started (JVM, Python workers) at once."""
    leader = psutil.Process(pid)
    family = [leader, *Proc.family(leader)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(family, timeout=30)


def test_kill_minus_9_mid_batch_and_restart_loses_and_duplicates_nothing(spark, settings, api_server):
    st = job_settings(settings, "kill9", trigger_interval_s=1.0, max_records_per_trigger=1500)
    topic = settings.kafka.purchases_topic
    since = {int(p): o for p, o in json.loads(st.streaming.starting_offsets)[topic].items()}
    checkpoint = Path(locations.checkpoint_url(st, locations.PURCHASES))
    service = StreamingService(st)
    try:  # the job is stopped whatever fails: a job left running would slow every later test
        poster = Poster(api_server.url)
        poster.start()
        try:
            service.start()  # returns once the status file says the query made progress
            assert service.status().state == "healthy"
            # kill it while a batch that carries records has written its Parquet file but not committed
            deadline = time.monotonic() + 300  # a batch at a time: a busy machine makes them slow
            while True:
                assert time.monotonic() < deadline, "never caught a batch between writing and committing"
                planned, committed = batches(checkpoint / "offsets"), batches(checkpoint / "commits")
                if (
                    len(committed) >= 2
                    and planned[-1] not in committed
                    and batch_offsets(checkpoint, planned[-1], topic) != batch_offsets(checkpoint, planned[-2], topic)
                    and unlisted_files(st)
                ):
                    break
                time.sleep(0.01)
            in_flight = planned[-1]
            kill_minus_9(service.procs()[0].pid())
            assert in_flight not in batches(checkpoint / "commits"), "the batch committed before the kill"
            assert not service.healthy()

            service.start()  # continues from the checkpoint: re-runs the killed batch first
            time.sleep(3)
        finally:
            poster.stop.set()
            poster.join(60)
        assert poster.error is None, poster.error
        end = end_offsets(settings, topic)
        deadline = time.monotonic() + 180
        while True:
            done = batches(checkpoint / "commits")
            reached = batch_offsets(checkpoint, done[-1], topic) if done else {}
            if all(reached.get(str(p), 0) >= o for p, o in end.items()):
                break
            assert time.monotonic() < deadline, f"job did not catch up: at {reached}, topic ends at {end}"
            time.sleep(0.5)
    finally:
        service.stop()  # SIGTERM: stops after the current batch
    last_run = service.procs()[0].log_file.read_text().split("SIGTERM: stopping after the current batch")
    assert len(last_run) == 2 and "shopstream_streaming: stopped" in last_run[1], last_run[-1][-2000:]
    # the broker lost nothing: no offset rewind (a kill -9 of the job is no reason to read again)
    assert read_status(status_path(st))["rewinds"] == 0

    in_kafka = sum(end[p] - since[p] for p in end)
    assert in_kafka > len(poster.accepted) > 500  # retries put copies into the topic
    ids = [r.EventId for r in spark.read.parquet(locations.output_url(st)).select("EventId").collect()]
    assert len(ids) == len(set(ids)), "duplicates in the Parquet dataset"
    assert set(ids) == poster.accepted, (len(set(ids) - poster.accepted), len(poster.accepted - set(ids)))


# -- one setting switches the jar source and the Kafka source -----------------------------
def test_offline_jars_or_packages_and_the_kafka_connector_follow_the_settings(spark, settings):
    from shopstream.adapters.spark import KAFKA_PACKAGE, jar_options, s3a_conf
    from shopstream.spark_jars import spark_jar_paths

    # here (local mode, a cluster on loopback) the jars go on the class path where they lie;
    # a cluster elsewhere gets them through spark.jars
    here = os.pathsep.join(map(str, spark_jar_paths(settings)))
    assert jar_options(settings) == {"spark.driver.extraClassPath": here, "spark.executor.extraClassPath": here}
    far = settings.model_copy(
        update={"spark": settings.spark.model_copy(update={"master": "spark://spark.example:7077"})}
    )
    assert jar_options(far) == {"spark.jars": ",".join(map(str, spark_jar_paths(settings)))}
    assert "fs.s3a.signing-algorithm" not in s3a_conf(settings)  # SeaweedFS takes the SDK v1's SigV4
    online = settings.model_copy(
        update={
            "spark": settings.spark.model_copy(update={"jars_source": "packages"}),
            "streaming": settings.streaming.model_copy(update={"kafka_source": "kafka"}),
        }
    )
    assert jar_options(online) == {"spark.jars.packages": f"{settings.spark.s3a_packages},{KAFKA_PACKAGE}"}
    # here Spark's connector is not on the classpath: asking for it fails at once, by its name
    with pytest.raises(Exception, match="kafka"):
        job.read_topic(spark, online)


def test_kafka_source_shares_a_read_limit_by_backlog_and_refuses_offsets_deleted_by_retention():
    from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadMaxRows

    from shopstream_streaming.kafka_source import KafkaRange, KafkaStreamReader

    reader = KafkaStreamReader({"kafka.bootstrap.servers": "127.0.0.1:1", "subscribe": "T"})
    reader._bounds = lambda: {"T": {"0": (0, 1000), "1": (0, 100), "2": (50, 60)}}  # (earliest, next)
    reader._fingerprints = lambda wanted: {k: None for k in wanted}  # no records to mark (test_offset_rewinds has them)
    start = {"T": {"0": 0, "1": 0}}  # partition 2 appeared since: read from its beginning
    assert reader.latestOffset(start, ReadAllAvailable()) == {"T": {"0": 1000, "1": 100, "2": 60}}
    # 110 of a 1110-record backlog: each partition gets its share, so they catch up together
    end = reader.latestOffset(start, ReadMaxRows(110))
    assert end == {"T": {"0": 99, "1": 9, "2": 51}}
    # so few records are read by one task, partition after partition
    (task,) = reader.partitions(start, end)
    assert [(r.partition, r.start, r.end) for r in task.ranges] == [(0, 0, 99), (1, 0, 9), (2, 0, 51)]
    assert all(isinstance(r, KafkaRange) for r in task.ranges)
    with pytest.raises(RuntimeError, match="deleted"):  # the checkpoint is before what the broker still has
        reader.latestOffset({"T": {"0": 0, "1": 0, "2": 10}}, ReadAllAvailable())


def test_a_backlog_is_split_across_tasks_of_at_least_the_task_size_and_every_record_is_in_one():
    from shopstream_streaming.kafka_source import KafkaRange, pack

    sizes = {0: 30_000, 1: 25_000, 2: 12_000, 3: 9_000, 4: 500, 5: 0}
    ranges = [KafkaRange("T", p, 100, 100 + n) for p, n in sizes.items() if n]
    tasks = pack(ranges, 20_000)
    assert len(tasks) == 4  # 76,500 records: ceil(76,500 / 20,000), at most one per range
    # largest first, each to the task with the fewest records
    assert sorted(sum(map(len, t.ranges)) for t in tasks) == [9_500, 12_000, 25_000, 30_000]
    assert sorted((r.partition, r.start, r.end) for t in tasks for r in t.ranges) == sorted(
        (r.partition, r.start, r.end) for r in ranges
    )
    assert len(pack(ranges, 10**9)) == 1  # a small batch: one task
    assert len(pack(ranges, 1)) == len(ranges)  # never more tasks than ranges
    assert pack([], 20_000) == []
    # a multiple of the cores where the ranges allow, so no core idles while the last task runs
    assert len(pack(ranges, 20_000, cores=2)) == 4
    assert len(pack(ranges, 25_000, cores=2)) == 4  # 3 tasks' worth, rounded up
    assert len(pack(ranges, 20_000, cores=3)) == 5  # 6 would be more tasks than ranges
    assert len(pack(ranges, 10**9, cores=2)) == 1  # a small batch: still one task
    for cores in (2, 3):
        assert sorted((r.partition, r.start) for t in pack(ranges, 20_000, cores) for r in t.ranges) == sorted(
            (r.partition, r.start) for r in ranges
        )


# -- the Spark schema is derived from the contract ----------------------------------------
def test_spark_schema_is_derived_from_the_contract():
    schema = spark_schema(PurchaseRecord)
    assert schema.fieldNames() == list(PurchaseRecord.model_fields)
    types = {f.name: f.dataType for f in schema.fields}
    line = T.StructType(
        [
            T.StructField("ProductId", T.StringType(), False),
            T.StructField("ItemCount", T.IntegerType(), False),
            T.StructField("ItemPrice", MONEY, False),
            T.StructField("ItemDiscount", MONEY, False),
        ]
    )
    assert types == {
        "SessionId": T.StringType(),
        "TimeStamp": T.TimestampType(),
        "UserId": T.StringType(),
        "TotalPrice": MONEY,
        "OrderId": T.StringType(),
        "Products": T.ArrayType(line, containsNull=False),
        "PaymentType": T.StringType(),
        "EventId": T.StringType(),
        "IngestedAt": T.TimestampType(),
        "ClientIp": T.StringType(),
        "UserAgent": T.StringType(),
        "Source": T.StringType(),
    }
    assert line.fieldNames() == list(ProductLine.model_fields)
    # every field of the contract is required; the envelope's sender fields are null in older records
    assert {f.name for f in schema.fields if f.nullable} == {"ClientIp", "UserAgent", "Source"}


def test_schema_derivation_covers_optional_and_other_types():
    class Colour(str, Enum):
        red = "red"

    class Inner(BaseModel):
        Flag: bool

    class Sample(BaseModel):
        Big: int
        Ratio: float
        Day: date
        Tags: list[str]
        Colour: Colour
        Maybe: Inner | None = None
        Amount: Decimal = Field(max_digits=12, decimal_places=4)

    schema = spark_schema(Sample)
    assert [(f.name, f.dataType, f.nullable) for f in schema.fields] == [
        ("Big", T.LongType(), False),
        ("Ratio", T.DoubleType(), False),
        ("Day", T.DateType(), False),
        ("Tags", T.ArrayType(T.StringType(), False), False),
        ("Colour", T.StringType(), False),
        ("Maybe", T.StructType([T.StructField("Flag", T.BooleanType(), False)]), True),
        ("Amount", T.DecimalType(12, 4), False),
    ]

    class Loose(BaseModel):
        Amount: Decimal

    with pytest.raises(TypeError, match="max_digits"):
        spark_schema(Loose)


COMPACT_INTERVAL = "spark.sql.streaming.fileSink.log.compactInterval"


def test_lake_reader_without_spark_sees_exactly_the_committed_files_across_compaction(spark, settings, api_server):
    """`shopstream.adapters.lake` (the dashboard's and the freshness benchmark's reader) against
    what `spark.read.parquet` reads: the same files after a few batches, and again after more,
    read incrementally across the sink log's compaction (every 3rd batch here, every 10th by
    default: `<batch>.compact` holds every earlier entry)."""
    from shopstream.adapters.lake import LakeFiles
    from shopstream.adapters.s3 import s3_client

    cfg = job_settings(settings, "lake-reader", max_records_per_trigger=2)
    run = uuid.uuid4().hex[:8]
    reader = LakeFiles(s3_client(cfg.s3), cfg)

    def logs() -> list[str]:
        objects = s3_client(cfg.s3).list_objects(cfg.s3.bucket, prefix=f"{cfg.streaming.output_path}/_spark_metadata/")
        return sorted((o.object_name.rsplit("/", 1)[1] for o in objects), key=lambda n: int(n.split(".")[0]))

    orders: list[str] = []
    spark.conf.set(COMPACT_INTERVAL, "3")
    try:
        # batches of 1-3 records: the second run has 3 batches or more, so one of them compacts the log
        for first, n in ((0, 4), (4, 9)):
            logs_before = logs()  # the second run must add a compaction to these
            bodies = [purchase(run, i) for i in range(first, first + n)]
            post(api_server.url, bodies, key=None)
            orders += [b["OrderId"] for b in bodies]
            run_until_caught_up(spark, cfg)
            url = locations.output_url(cfg)
            spark_files = {f.split(f"/{cfg.s3.bucket}/", 1)[1] for f in spark.read.parquet(url).inputFiles()}
            assert reader.committed() == spark_files
    finally:
        spark.conf.unset(COMPACT_INTERVAL)
    crossed = [n for n in logs() if n.endswith(".compact") and n not in logs_before]
    assert crossed, logs()  # the second read went across a compaction
    table = reader.read(reader.committed())
    assert sorted(table.column("OrderId").to_pylist()) == sorted(orders)
