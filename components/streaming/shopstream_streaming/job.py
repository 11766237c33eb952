"""The streaming job: `PurchasedItem` into raw Parquet on S3, exactly once.

Two queries read the topic, each with its own checkpoint and Spark's file sink, whose
`_spark_metadata` log lists the files of committed batches only (readers of the
top-level path see nothing else, so a batch killed half-way and re-run leaves no copy):

- `purchases`: every record that satisfies the contract, as received (every field,
  Products nested, money as exact decimals) plus its Kafka coordinates, one copy per
  EventId (a client retry with the same Idempotency-Key publishes the same EventId again),
  partitioned by `date`, IngestedAt's UTC date.
- `quarantine`: every other record, raw bytes and coordinates kept, with the reason,
  partitioned by `date`, the Kafka timestamp's UTC date.

The contract decides validity (Pydantic, the same model the API validates with); the
Spark schema is derived from it. A record Pydantic accepts but Spark could not read
into that schema goes to quarantine too, never silently to nulls.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from shopstream.contracts import PurchaseRecord, why_invalid
from shopstream.contracts.spark import spark_schema
from shopstream.locations import PURCHASES, QUARANTINE, checkpoint_url, output_url, quarantine_url
from shopstream.rewinds import streaming_file
from shopstream.settings import Settings

from .kafka_source import NAME as PYTHON_SOURCE
from .kafka_source import QUERY, REWINDS_FILE, KafkaSource

COORDINATES = {
    "topic": "KafkaTopic",
    "partition": "KafkaPartition",
    "offset": "KafkaOffset",
    "timestamp": "KafkaTimestamp",
}
RECORD_SCHEMA = spark_schema(PurchaseRecord)
QUERIES = {PURCHASES: output_url, QUARANTINE: quarantine_url}  # each query and where it writes (shopstream.locations)


# -- reading --------------------------------------------------------------------------
def read_topic(spark: SparkSession, settings: Settings, query: str | None = None) -> DataFrame:
    """The topic as Spark's Kafka source gives it (key, value, topic, partition, offset, ...).

    The project's source also records where it read records again after the broker lost
    some (`query` names the reader in that record). Spark's own connector does no such
    thing: it relies on Kafka's own guarantees (a replicated log, no unclean leader
    election), and with failOnDataLoss it fails the query where offsets went missing."""
    st = settings.streaming
    if st.kafka_source == "python":
        spark.dataSource.register(KafkaSource)
    reader = (
        spark.readStream.format(PYTHON_SOURCE if st.kafka_source == "python" else "kafka")
        .option("kafka.bootstrap.servers", settings.kafka.bootstrap_servers)
        .option("subscribe", settings.kafka.purchases_topic)
        .option("startingOffsets", st.starting_offsets)
        .option("maxOffsetsPerTrigger", str(st.max_records_per_trigger))
        .option("failOnDataLoss", "true")
        .option("kafka.request.timeout.ms", str(int(st.kafka_timeout_s * 1000)))
    )
    if st.kafka_source == "python":
        reader = reader.option(REWINDS_FILE, str(streaming_file(settings)))
        if query:
            reader = reader.option(QUERY, query)
    return reader.load()


CHECK = T.StructType([T.StructField("reason", T.StringType()), T.StructField("json", T.StringType())])


def check_contract(value: bytes | None) -> tuple[str | None, str | None]:
    """(why the Kafka value is not a PurchaseRecord, None) or (None, the record as the API
    writes it). Spark parses the latter only, so it reads exactly what the contract
    understood (a timestamp with an offset as its UTC instant, money as the decimal it is)."""
    if value is None:
        return "empty record (no value)", None
    try:
        record = PurchaseRecord.model_validate_json(value)
    except Exception as e:  # noqa: BLE001 - one record, whatever is wrong with it, never fails the query
        return why_invalid(e), None
    return None, record.model_dump_json()


# Marked nondeterministic only so the optimizer never copies it into the filters below
# (it would run Pydantic twice per record).
check_contract_udf = F.udf(check_contract, CHECK, useArrow=True).asNondeterministic()


def _has_missing(col: Column, dtype: T.DataType, nullable: bool) -> Column:
    """True where a value the schema says cannot be null is null, at any depth."""
    checks = [] if nullable else [col.isNull()]
    if isinstance(dtype, T.StructType):
        inner = [_has_missing(col[f.name], f.dataType, f.nullable) for f in dtype.fields]
        checks.append(col.isNotNull() & reduce(Column.__or__, inner))
    elif isinstance(dtype, T.ArrayType):
        checks.append(
            F.coalesce(F.exists(col, lambda x: _has_missing(x, dtype.elementType, dtype.containsNull)), F.lit(False))
        )
    return reduce(Column.__or__, checks) if checks else F.lit(False)


def classify(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows plus `record` (parsed with the Spark schema derived from the contract)
    and `reason` (null for a valid record). Were that schema ever to drift from the
    contract, the rows it cannot hold go to quarantine instead of turning into nulls."""
    unreadable = F.concat_ws(
        ", ",
        *[
            F.when(_has_missing(F.col("record")[f.name], f.dataType, f.nullable), F.lit(f.name))
            for f in RECORD_SCHEMA.fields
        ],
    )
    return (
        kafka_rows.withColumn("check", check_contract_udf("value"))
        .withColumn("record", F.from_json("check.json", RECORD_SCHEMA))
        .withColumn(
            "reason",
            F.coalesce(
                "check.reason",
                F.when(unreadable != "", F.concat(F.lit("valid, but Spark could not read "), unreadable)),
            ),
        )
        .drop("check")
    )


def _coordinates() -> list[Column]:
    return [F.col(k).alias(v) for k, v in COORDINATES.items()]


def purchases(classified: DataFrame, settings: Settings) -> DataFrame:
    """Valid records, one per EventId: a copy published within the dedupe window of the
    first is dropped (the EventIds seen are kept in the checkpoint's state that long).

    The window runs on the Kafka timestamp, when the API published the copy: event time,
    so copies split by a restart of the job are still recognised, and, unlike IngestedAt
    in the record, nothing a producer writes into the value can move the watermark.
    """
    window = f"{settings.streaming.dedupe_window_minutes} minutes"
    return (
        classified.where(F.col("reason").isNull())
        .select("record.*", *_coordinates())
        .withColumn("date", F.to_date("IngestedAt"))
        .withWatermark("KafkaTimestamp", window)
        .dropDuplicatesWithinWatermark(["EventId"])
        .coalesce(1)  # after the dedupe's shuffle: one file per date per batch
    )


def quarantined(classified: DataFrame) -> DataFrame:
    return (
        classified.where(F.col("reason").isNotNull())
        .select(
            F.col("reason").alias("Reason"),
            F.col("key").alias("Key"),
            F.col("value").alias("Value"),
            *_coordinates(),
            F.to_date("timestamp").alias("date"),
        )
        .repartition(1)
    )  # one file per date per batch; only the (few) rejected rows are shuffled


# -- writing --------------------------------------------------------------------------
def _sink(df: DataFrame, name: str, path: str, checkpoint: str, trigger: dict) -> StreamingQuery:
    return (
        df.writeStream.queryName(name)
        .format("parquet")
        .option("path", path)
        .option("checkpointLocation", checkpoint)
        .partitionBy("date")
        .outputMode("append")
        .trigger(**trigger)
        .start()
    )


def start(spark: SparkSession, settings: Settings, available_now: bool = False) -> list[StreamingQuery]:
    """Start both queries; with `available_now`, each stops once it has written what the
    topic held when it started (a backfill, or a test)."""
    for name in QUERIES:  # both checked before either starts
        check_checkpoint(spark, QUERIES[name](settings), checkpoint_url(settings, name))
    return [start_query(spark, settings, name, available_now, checked=True) for name in QUERIES]


def start_query(
    spark: SparkSession, settings: Settings, name: str, available_now: bool = False, checked: bool = False
) -> StreamingQuery:
    """Start one query from its checkpoint (the first start, or a restart after a failure).

    Its own reader (as there would be anyway: each query runs its own source), named so
    that its rewinds say whose checkpoint went back."""
    path, checkpoint = QUERIES[name](settings), checkpoint_url(settings, name)
    if not checked:
        check_checkpoint(spark, path, checkpoint)
    trigger = (
        {"availableNow": True}
        if available_now
        else {"processingTime": f"{settings.streaming.trigger_interval_s} seconds"}
    )
    rows = classify(read_topic(spark, settings, name))
    frame = purchases(rows, settings) if name == PURCHASES else quarantined(rows)
    return _sink(written_rows(frame, name), name, path, checkpoint, trigger)


def written_rows(df: DataFrame, name: str) -> DataFrame:
    """Count the rows each batch writes; the count appears in the query's progress under
    `observedMetrics[name]["rows"]` (a file sink reports no output count of its own;
    `status.rows_written` reads it)."""
    return df.observe(name, F.count(F.lit(1)).alias("rows"))


class CheckpointMismatch(RuntimeError):
    """Output and checkpoint do not belong together; starting would lose records silently."""


def _has_entries(spark: SparkSession, url: str) -> bool:
    jvm = spark._jvm  # Hadoop's FileSystem: the same view of s3a:// and local paths as the sinks
    assert jvm is not None  # a classic (not Spark Connect) session has its JVM
    path = jvm.org.apache.hadoop.fs.Path(url)
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    return bool(fs.exists(path) and len(fs.listStatus(path)) > 0)


def check_checkpoint(spark: SparkSession, output: str, checkpoint: str) -> None:
    """Refuse to start when output and checkpoint were not made together.

    A new checkpoint over an old output: Spark's file sink silently skips every batch
    number its log already holds, losing those records. An old checkpoint over a deleted
    output: the job would carry on from its offsets and never rewrite what was deleted.
    """
    written = _has_entries(spark, f"{output}/_spark_metadata")
    if written and not _has_entries(spark, f"{checkpoint}/offsets"):
        raise CheckpointMismatch(
            f"{output} was written with a checkpoint that is not at {checkpoint}. Restore that "
            "checkpoint, or delete the output and the checkpoint together and start again."
        )
    if not written and _has_entries(spark, f"{checkpoint}/commits"):
        raise CheckpointMismatch(
            f"{checkpoint} has committed batches but {output} has no data: the output was deleted. "
            "Delete the checkpoint too to rebuild the output from what Kafka still holds."
        )
