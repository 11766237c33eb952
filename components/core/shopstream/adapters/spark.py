"""The SparkSession, configured from the settings: master, memory, s3a, jars.

s3a works with the pinned offline jars (hadoop-aws 3.3.1 + AWS SDK v1, installed by
`invoke setup`) or with `spark.jars.packages` where a Maven repository is reachable;
one setting (`SHOPSTREAM_SPARK__JARS_SOURCE`) chooses, the rest of the code is the same.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import pyspark
from pyspark.sql import SparkSession

from shopstream.settings import Settings
from shopstream.spark_jars import spark_jar_paths

# Spark's own Kafka connector, used when SHOPSTREAM_STREAMING__KAFKA_SOURCE=kafka.
KAFKA_PACKAGE = f"org.apache.spark:spark-sql-kafka-0-10_2.13:{pyspark.__version__}"

# hadoop-aws 3.3.1 reads these with getInt/getLong, while Spark 4's Hadoop defaults carry
# unit suffixes ("60s", "64M"): NumberFormatException unless they are plain numbers.
S3A_PLAIN_NUMBERS = {
    "fs.s3a.connection.establish.timeout": "30000",
    "fs.s3a.connection.timeout": "200000",
    "fs.s3a.connection.ttl": "300000",
    "fs.s3a.threads.keepalivetime": "60",
    "fs.s3a.multipart.purge.age": "86400",
    "fs.s3a.assumed.role.session.duration": "1800",
    "fs.s3a.multipart.size": "67108864",
    "fs.s3a.multipart.threshold": "134217728",
    "fs.s3a.block.size": "33554432",
    "fs.s3a.readahead.range": "65536",
}


def s3a_conf(settings: Settings) -> dict[str, str]:
    """Hadoop s3a options (without the `spark.hadoop.` prefix) for the settings' S3 server."""
    s3 = settings.s3
    return {
        "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "fs.s3a.endpoint": s3.endpoint_url,
        "fs.s3a.endpoint.region": s3.region,
        "fs.s3a.access.key": s3.access_key,
        "fs.s3a.secret.key": s3.secret_key.get_secret_value(),
        "fs.s3a.path.style.access": "true",  # MinIO and SeaweedFS: no bucket subdomains
        "fs.s3a.connection.ssl.enabled": str(s3.secure).lower(),
        "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        **S3A_PLAIN_NUMBERS,
    }


def jar_options(settings: Settings) -> dict[str, str]:
    """The offline, pinned jars (on the class path here, else spark.jars) or spark.jars.packages
    (Maven) for s3a, plus Kafka's connector."""
    packages = [KAFKA_PACKAGE] if settings.streaming.kafka_source == "kafka" else []
    options: dict[str, str] = {}
    if settings.spark.jars_source == "packages":
        packages.insert(0, settings.spark.s3a_packages)
    else:
        jars = spark_jar_paths(settings)
        missing = [str(j) for j in jars if not j.exists()]
        if missing:
            raise FileNotFoundError(f"Spark's S3 jars are missing ({', '.join(missing)}); run `invoke setup`")
        if on_this_machine(settings):  # driver and executors read the jars where they lie
            options["spark.driver.extraClassPath"] = options["spark.executor.extraClassPath"] = os.pathsep.join(
                map(str, jars)
            )
        else:  # the driver serves them to executors elsewhere, which copy them (190 MB) first
            options["spark.jars"] = ",".join(map(str, jars))
    if packages:
        options["spark.jars.packages"] = ",".join(packages)
    return options


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def on_this_machine(settings: Settings) -> bool:
    """Whether the driver and every executor run here: local mode, or a cluster on loopback."""
    master = settings.spark.master
    host = urlsplit(master.split(",")[0]).hostname if master.startswith("spark://") else None
    return master.startswith("local") or host in LOOPBACK


def cluster_options(settings: Settings) -> dict[str, str]:
    """Executors' size on a standalone cluster (spark://), and how many cores an application
    takes at most: without that cap the first application (the streaming job) would hold every
    core, and the next (the notebooks) would wait for one forever."""
    spark = settings.spark
    if not spark.master.startswith("spark://"):
        return {}
    return {
        "spark.executor.memory": spark.executor_memory,
        "spark.executor.cores": str(spark.executor_cores),
        "spark.cores.max": str(spark.cores_max),
        # executors start this interpreter for Python work (UDFs, the Kafka source): this venv,
        # where the project's packages are importable (a cluster on other machines needs the same path)
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
    }


def spark_session(settings: Settings, app_name: str = "shopstream") -> SparkSession:
    """A SparkSession for the settings (the one already running in this process, if any)."""
    # Python workers (UDFs, the Kafka source) run this interpreter: they need this venv.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = settings.spark
    if on_this_machine(settings):
        # nothing outside this machine needs to reach the driver (a cluster on 127.0.0.1 included)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(spark.master)
        .appName(app_name)
        .config("spark.driver.memory", spark.driver_memory)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # progress bars garble the service log
        .config("spark.sql.session.timeZone", "UTC")  # dates of partitions are UTC dates
        .config("spark.sql.shuffle.partitions", str(settings.streaming.state_partitions))
        .config("spark.sql.adaptive.enabled", "false")  # streaming cannot use it; it only warns
        # no extra batch after each one just to move the dedupe watermark (half the batches, log
        # entries and checkpoint files); old dedupe state is dropped in the next batch with data
        .config("spark.sql.streaming.noDataMicroBatches.enabled", "false")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")  # not legacy INT96
        # a query stuck in a call (a broker that is gone) cannot hold a stopping job forever
        .config("spark.sql.streaming.stopTimeout", "60s")
    )
    for key, value in {**cluster_options(settings), **jar_options(settings)}.items():
        builder = builder.config(key, value)
    for key, value in s3a_conf(settings).items():
        builder = builder.config(f"spark.hadoop.{key}", value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
