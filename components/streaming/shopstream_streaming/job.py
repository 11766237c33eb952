"""The streaming job: `PurchasedItem` into raw Parquet on S3, exactly once.

One query reads the topic and checks each record against the contract once, then writes
each micro-batch to two outputs, each with Spark's own file sink (`FileStreamSink`, what
`format("parquet")` runs), whose `_spark_metadata` log lists the files of committed
batches only (readers of the top-level path see nothing else):

- `purchases` (the lake): every record that satisfies the contract, as received (every
  field, Products nested, money as exact decimals) plus its Kafka coordinates, one copy
  per EventId (a client retry with the same Idempotency-Key publishes the same EventId
  again), partitioned by `date`, IngestedAt's UTC date.
- `quarantine`: every other record, raw bytes and coordinates kept, with the reason,
  partitioned by `date`, the Kafka timestamp's UTC date.

Exactly once: the batch's offsets are in the checkpoint before it runs; a sink skips a
batch id its log already holds, so a batch re-run after a crash (between the two writes,
or before the checkpoint's commit) writes each output once. The batch is kept in memory
between the two writes, so the topic is read, and the contract checked, once per record.
(Two queries, one per output, did both twice.)

The contract decides validity (Pydantic, the same model the API validates with), over a
whole Arrow batch per call; the Spark schema is derived from it. The UDF hands Spark the
valid records already in that schema: their JSON, as the contract writes it, read by
Arrow's JSON reader in one pass per batch (no JSON parsing per row in the JVM). A record
Pydantic accepts but Arrow cannot hold in that schema goes to quarantine too, with the
reason, never silently to nulls. Only a rejected record keeps its raw bytes past the check.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pyarrow import json as pa_json
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.streaming import StreamingQuery

from shopstream.contracts import PurchaseRecord, why_invalid
from shopstream.contracts.enrichment import Enrichment
from shopstream.contracts.spark import spark_schema
from shopstream.enrichment import enrichment_fields
from shopstream.locations import PURCHASES, QUARANTINE, checkpoint_url, output_url, quarantine_url
from shopstream.rewinds import streaming_file
from shopstream.settings import Settings

from .kafka_source import CORES, QUERY, REWINDS_FILE, KafkaSource
from .kafka_source import NAME as PYTHON_SOURCE

COORDINATES = {
    "topic": "KafkaTopic",
    "partition": "KafkaPartition",
    "offset": "KafkaOffset",
    "timestamp": "KafkaTimestamp",
}
RECORD_SCHEMA = spark_schema(PurchaseRecord)
NAME = PURCHASES  # the query's name (the status file's key) and its checkpoint's folder
OUTPUTS = {PURCHASES: output_url, QUARANTINE: quarantine_url}  # where each output is (shopstream.locations)
ONE_FILE_ROWS = 20_000  # a batch of fewer rows writes one file per date per output (`BatchWriter`)


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
        reader = reader.option(CORES, str(spark.sparkContext.defaultParallelism))
        if query:
            reader = reader.option(QUERY, query)
    return reader.load()


# -- the contract ---------------------------------------------------------------------
# The record as Spark's Arrow exchange holds RECORD_SCHEMA (timestamps as UTC instants)
RECORD_ARROW = pa.struct(list(to_arrow_schema(RECORD_SCHEMA, timezone="UTC")))
ENRICHMENT_SCHEMA = spark_schema(Enrichment)
ENRICHMENT_ARROW = pa.struct(list(to_arrow_schema(ENRICHMENT_SCHEMA)))
CHECK = T.StructType(
    [
        T.StructField("reason", T.StringType()),
        T.StructField("record", RECORD_SCHEMA),
        T.StructField("enrichment", ENRICHMENT_SCHEMA),
    ]
)
_ARROW_JSON = pa_json.ParseOptions(explicit_schema=pa.schema(list(RECORD_ARROW)), unexpected_field_behavior="error")
UNREADABLE = "valid, but Spark could not read it: "


def check_contract(value: bytes | None) -> tuple[str | None, bytes | None]:
    """(why the Kafka value is not a PurchaseRecord, None) or (None, the record's JSON as the
    contract writes it). Only the latter is read into Spark's schema, so Spark gets exactly
    what the contract understood (a timestamp with an offset as its UTC instant, money as
    the decimal it is)."""
    if value is None:
        return "empty record (no value)", None
    try:
        record = PurchaseRecord.model_validate_json(value)
    except Exception as e:  # noqa: BLE001 - one record, whatever is wrong with it, never fails the query
        return why_invalid(e), None
    return None, record.__pydantic_serializer__.to_json(record)


def _read_records(lines: list[bytes]) -> tuple[pa.StructArray, list[str | None]]:
    """The valid records' JSON read into RECORD_ARROW by Arrow's JSON reader, all in one pass:
    (the records, and for each one the reason it could not be read, or None). Arrow holds
    the schema strictly (a required field absent, a decimal that does not fit): should the
    schema ever drift from the contract, such a record goes to quarantine, never to nulls."""
    try:
        table = pa_json.read_json(pa.py_buffer(b"\n".join(lines)), parse_options=_ARROW_JSON)
        # the reader checks the schema's non-null fields but reports nested ones as nullable
        return table.combine_chunks().to_struct_array().combine_chunks().cast(RECORD_ARROW), [None] * len(lines)
    except pa.ArrowInvalid:  # one at a time, to find the ones it cannot hold
        rows: list[dict | None] = []
        reasons: list[str | None] = []
        for line in lines:
            try:
                (row,) = pa_json.read_json(pa.py_buffer(line), parse_options=_ARROW_JSON).to_pylist()
                rows.append(row)
                reasons.append(None)
            except pa.ArrowInvalid as e:
                rows.append(None)
                reasons.append(f"{UNREADABLE}{e}")
        return pa.array(rows, RECORD_ARROW), reasons


def check_contracts(values: pa.Array) -> pa.Array:
    """`check_contract` over an Arrow batch of Kafka values (Spark hands over up to 10,000 a
    call), the valid records parsed into Spark's schema by Arrow: one call from the JVM per
    batch, and no JSON parsing per row in the JVM."""
    reasons: list[str | None] = []
    lines: list[bytes] = []
    at: list[int | None] = []  # each value's row among the lines
    for value in values.to_pylist():
        reason, line = check_contract(value)
        reasons.append(reason)
        at.append(None if line is None else len(lines))
        if line is not None:
            lines.append(line)
    if not lines:
        return pa.StructArray.from_arrays(
            [
                pa.array(reasons, pa.string()),
                pa.nulls(len(reasons), RECORD_ARROW),
                pa.nulls(len(reasons), ENRICHMENT_ARROW),
            ],
            names=CHECK.fieldNames(),
        )
    records, unread = _read_records(lines)
    for i, row in enumerate(at):
        if row is not None and unread[row] is not None:
            reasons[i], at[i] = unread[row], None
    rows = pa.array(at, pa.int64())
    return pa.StructArray.from_arrays(
        [pa.array(reasons, pa.string()), records.take(rows), _enrichments(records).take(rows)],
        names=CHECK.fieldNames(),
    )


def _enrichments(records: pa.StructArray) -> pa.StructArray:
    """Each record's envelope enriched (`shopstream.enrichment`), as the lake keeps it beside the record."""
    pairs = zip(records.field("ClientIp").to_pylist(), records.field("UserAgent").to_pylist(), strict=True)
    return pa.array([enrichment_fields(ip, ua) for ip, ua in pairs], ENRICHMENT_ARROW)


# Marked nondeterministic only so the optimizer never copies it into the filters below
# (it would run Pydantic twice per record).
# (Spark reads the kind of Arrow UDF from the type hints; pyspark's stubs cover only the
# older form that names it, which warns)
check_contracts_udf = F.arrow_udf(check_contracts, CHECK).asNondeterministic()  # type: ignore[call-overload]


def classify(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows plus `record` (the contract's record in the Spark schema derived from it)
    and `reason` (null for a valid record). Only a rejected record keeps its raw key and
    value (the quarantine's): a valid one is shuffled and cached in its parsed form only."""
    rejected = F.col("check.reason").isNotNull()
    return kafka_rows.withColumn("check", check_contracts_udf("value")).select(
        F.when(rejected, F.col("key")).alias("key"),
        F.when(rejected, F.col("value")).alias("value"),
        *[c for c in kafka_rows.columns if c not in ("key", "value")],
        F.col("check.record").alias("record"),
        F.col("check.enrichment").alias("enrichment"),
        F.col("check.reason").alias("reason"),
    )


def deduplicated(classified: DataFrame, settings: Settings) -> DataFrame:
    """One row per EventId among valid records: a copy published within the dedupe window
    of the first is dropped (the EventIds seen are kept in the checkpoint's state that long).
    A rejected record is keyed by where it is in the topic and what it holds, so only the
    same record read again (after an offset rewind) is dropped.

    The window runs on the Kafka timestamp, when the API published the copy: event time,
    so copies split by a restart of the job are still recognised, and, unlike IngestedAt
    in the record, nothing a producer writes into the value can move the watermark.
    """
    window = f"{settings.streaming.dedupe_window_minutes} minutes"
    where = F.concat_ws("/", "topic", "partition", "offset", F.xxhash64("value"))
    return (
        classified.withColumn(
            "dedupe_key",
            F.when(F.col("reason").isNull(), F.col("record.EventId")).otherwise(F.concat(F.lit("@"), where)),
        )
        .withWatermark("timestamp", window)
        .dropDuplicatesWithinWatermark(["dedupe_key"])
    )


def _coordinates() -> list[Column]:
    return [F.col(k).alias(v) for k, v in COORDINATES.items()]


def purchases(batch: DataFrame) -> DataFrame:
    """The valid records of a batch, as the lake holds them."""
    return (
        batch.where(F.col("reason").isNull())
        .select("record.*", F.col("enrichment").alias("Enrichment"), *_coordinates())
        .withColumn("date", F.to_date("IngestedAt"))
    )


def quarantined(batch: DataFrame) -> DataFrame:
    """The rejected records of a batch, with the reason; one file per date (they are few)."""
    return (
        batch.where(F.col("reason").isNotNull())
        .select(
            F.col("reason").alias("Reason"),
            F.col("key").alias("Key"),
            F.col("value").alias("Value"),
            *_coordinates(),
            F.to_date("timestamp").alias("date"),
        )
        .coalesce(1)
    )


OUTPUT_ROWS = {PURCHASES: purchases, QUARANTINE: quarantined}


def counted(df: DataFrame) -> DataFrame:
    """Count the rows each batch writes to each output; the counts appear in the query's
    progress under `observedMetrics["written"]` (`status.rows_written` reads them)."""
    valid = F.col("reason").isNull()
    return df.observe(
        "written", F.count(F.when(valid, 1)).alias(PURCHASES), F.count(F.when(~valid, 1)).alias(QUARANTINE)
    )


# -- writing --------------------------------------------------------------------------
def file_sink(spark: SparkSession, path: str) -> Any:
    """Spark's file sink for Parquet partitioned by `date`, as `writeStream.format("parquet")`
    builds it: `addBatch(id, rows)` writes the files, then logs them under that batch id in
    `_spark_metadata`, and does nothing for an id already logged."""
    jvm = spark._jvm
    assert jvm is not None  # a classic (not Spark Connect) session has its JVM
    scala = jvm.org.apache.spark.api.python.PythonUtils
    return jvm.org.apache.spark.sql.execution.streaming.sinks.FileStreamSink(
        spark._jsparkSession,
        path,
        jvm.org.apache.spark.sql.execution.datasources.parquet.ParquetFileFormat(),
        scala.toSeq(["date"]),
        scala.toScalaMap({}),
    )


class BatchWriter:
    """The query's foreachBatch: the batch kept in memory, each output written from it.

    The batch is first counted, which computes and keeps it with all its partitions at
    once. A batch of fewer than `ONE_FILE_ROWS` rows (the stack at rest) then writes one
    file per date per output; a larger one (a catch-up) writes its purchases from every
    partition at once, one file per partition and date."""

    def __init__(self, spark: SparkSession, settings: Settings) -> None:
        self.sinks = {name: file_sink(spark, url(settings)) for name, url in OUTPUTS.items()}

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        batch.persist()
        try:
            small = batch.count() < ONE_FILE_ROWS
            for name, sink in self.sinks.items():
                rows = OUTPUT_ROWS[name](batch)
                sink.addBatch(batch_id, (rows.coalesce(1) if small else rows)._jdf)
        finally:
            batch.unpersist()


def start(spark: SparkSession, settings: Settings, available_now: bool = False) -> StreamingQuery:
    """Start the query from its checkpoint (the first start, or a restart after a failure);
    with `available_now`, it stops once it has written what the topic held when it started
    (a backfill, or a test)."""
    checkpoint = checkpoint_url(settings, NAME)
    earlier = checkpoint_url(settings, QUARANTINE)
    if _has_entries(spark, f"{earlier}/offsets"):  # the job ran a query per output before
        raise CheckpointMismatch(
            f"{earlier} is the checkpoint of the earlier quarantine query: this job writes both outputs "
            "from one query and checkpoint, whose batches the old outputs' logs do not match. Delete the "
            "outputs and the checkpoints together and start again."
        )
    for url in OUTPUTS.values():
        check_checkpoint(spark, url(settings), checkpoint)
    trigger: dict[str, Any] = (
        {"availableNow": True}
        if available_now
        else {"processingTime": f"{settings.streaming.trigger_interval_s} seconds"}
    )
    rows = counted(deduplicated(classify(read_topic(spark, settings, NAME)), settings))
    return (
        rows.writeStream.queryName(NAME)
        .foreachBatch(BatchWriter(spark, settings))
        .option("checkpointLocation", checkpoint)
        .trigger(**trigger)
        .start()
    )


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
