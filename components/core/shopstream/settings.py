"""Typed settings for every component, read once from the environment.

Every host, port, credential and path lives here and nowhere else. Environment
variables are ``SHOPSTREAM_<GROUP>__<FIELD>`` (for example
``SHOPSTREAM_KAFKA__BOOTSTRAP_SERVERS``); a ``.env`` file in the working
directory is read too. The defaults describe the embedded local stack, so the
same code runs in compose or on a cluster by changing variables only.
"""

from __future__ import annotations

import ipaddress
import json
import os
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]


class StackMode(str, Enum):
    """Who runs the servers: the project itself, docker compose, or someone else."""

    embedded = "embedded"  # installed, started and stopped by `invoke up/down`
    compose = "compose"  # `docker compose -f infra/compose.yaml` on a machine with Docker
    external = "external"  # existing clusters; the project only connects


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    user_events_topic: str = "UserEvents"
    purchases_topic: str = "PurchasedItem"
    # dimension data (shopstream.contracts.dimensions), keyed by id, created compacted: the
    # broker keeps at least the latest record of every key, so a reader from the start gets all
    products_topic: str = "Products"
    customers_topic: str = "Customers"
    # partitions of each topic when created: the most consumer-group members the drain, and the
    # most tasks the streaming job's Kafka source, can use at once (existing topics keep theirs)
    partitions: int = Field(6, ge=1)
    replication_factor: int = Field(1, ge=1)

    @property
    def topics(self) -> list[str]:
        """The event topics: what the API publishes, the audit and the stages account for."""
        return [self.user_events_topic, self.purchases_topic]

    @property
    def dimension_topics(self) -> list[str]:
        """The compacted topics of dimension data: the generator publishes, the batch loads."""
        return [self.products_topic, self.customers_topic]


def bootstrap_servers(where: KafkaSettings | str) -> str:
    """The broker of the settings, or a bootstrap string as given (a Spark Python worker gets
    options, not settings): every Kafka client's adapter takes either."""
    return where.bootstrap_servers if isinstance(where, KafkaSettings) else where


class MongoSettings(BaseModel):
    uri: str = "mongodb://127.0.0.1:27017/?directConnection=true"
    database: str = "shopstream"
    # journaled write concern (j=True) on every write: a write is acknowledged only once it is in
    # the server's journal, so nothing a store's answer lets us forget is lost in a server crash
    journal: bool = True


class S3Settings(BaseModel):
    endpoint_url: str = "http://127.0.0.1:9000"
    access_key: str = "shopstream"
    secret_key: SecretStr = SecretStr("shopstream-secret")
    region: str = "us-east-1"
    bucket: str = "shopstream-lake"

    @property
    def host_port(self) -> str:
        return urlsplit(self.endpoint_url).netloc

    @property
    def secure(self) -> bool:
        return urlsplit(self.endpoint_url).scheme == "https"


class PostgresSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "shopstream"
    password: SecretStr = SecretStr("shopstream")
    database: str = "shopstream"

    @property
    def sqlalchemy_url(self) -> str:
        pw = quote(self.password.get_secret_value(), safe="")
        return f"postgresql+psycopg2://{quote(self.user)}:{pw}@{self.host}:{self.port}/{self.database}"


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes (each its own event loop, producer and journal slot); /metrics sums them
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    max_body_bytes: int = 1_048_576  # larger bodies get 413
    publish_timeout_s: float = 5.0  # no broker acknowledgement by then: 503
    linger_ms: int = 5  # producer batching window
    # the producer's codec: at 2 workers on 2 cores, lz4 gave 1.1x the events/s and 1.3x the
    # purchases/s of gzip (README, Ingestion API); kafka-python reads it with the lz4 package
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    max_json_depth: int = Field(32, ge=2)  # deeper bodies get 400 (the contracts nest 3 levels)
    # The acknowledgement journal: every record the broker acknowledged is appended (fsync,
    # group-committed) before the 2xx, and published again if the broker loses it. Off where a
    # replicated Kafka makes it redundant (compose, clusters).
    journal: bool = True
    journal_dir: Path | None = None  # default: <run_dir>/api/journal
    journal_max_bytes: int = Field(1 << 30, ge=1 << 20)  # journal on disk past this: 503 until it shrinks
    # a record leaves the journal once the broker has held it this long (checked by reading it back)
    journal_retention_s: float = Field(300.0, gt=0)
    journal_verify_interval_s: float = Field(2.0, gt=0)  # how often the broker's copy is read back
    # the ledger: the EventId of every acknowledged record, kept this long (what `invoke audit` checks)
    ledger_retention_hours: float = Field(24.0, gt=0)
    # Whose address a record's ClientIp is: the connection's peer, or, when the peer is one of
    # these proxies (JSON list of addresses or networks), the last address in X-Forwarded-For
    # that is not one of them (uvicorn's --forwarded-allow-ips; its default: this host's loopback,
    # as for a proxy on the same machine, which the generator plays for its visitors).
    trusted_proxies: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")]
    )
    # Privacy: an IPv4 address is kept without its last octet, an IPv6 one to its /48, before
    # it is published; nothing stores the full address. False keeps it whole.
    truncate_ips: bool = True
    # Write keys (shopstream.write_keys): a client sends `Authorization: Bearer <key>`, the API
    # stamps the key's name on its records (Source). Required: always (True), never (False), or,
    # unset, when the API listens on an address other than loopback. A key sent is always checked.
    require_keys: bool | None = None
    keys_file: Path | None = None  # the keys' SHA-256 hashes, names, rates; default <run_dir>/api/write-keys.json
    client_key: SecretStr | None = None  # the key THIS process sends (the generator, replay, the dashboard)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def keys_required(self) -> bool:
        """`require_keys`, or when unset: whether the API listens beyond this machine."""
        return self.require_keys if self.require_keys is not None else not is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """True for a name or address only this machine reaches (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost, or "" / "0.0.0.0"-like: any interface
        return False


class GeneratorSettings(BaseModel):
    """What `invoke up` runs the generator with (the CLI takes the same as options)."""

    sessions_per_second: int = Field(20, ge=1)
    seed: int | None = None  # set it to replay the same traffic


class BatchSettings(BaseModel):
    """The Airflow batch: UserEvents -> MongoDB, then per-(UserId, EventName) counts.

    The DAG's schedule and its tasks' timeouts come from here: each task works within its
    budget and leaves the rest for the next run, and Airflow stops it only `overrun_seconds`
    past that budget (a hung server), so a backlog shrinks run by run instead of ending in
    timeouts and retries."""

    consumer_group: str = "shopstream-batch"
    dimensions_group: str = "shopstream-dimensions"  # the dimensions task's offsets on Products and Customers
    events_collection: str = "user_events"
    counts_collection: str = "user_event_counts"
    dead_letter_collection: str = "user_events_dead_letter"
    # one document per session; its day sums, per-day users and product engagement are
    # `<name>_days`, `<name>_day_users` and `<name>_products`
    sessions_collection: str = "sessions"
    period_seconds: float = Field(120.0, gt=0)  # the DAG runs this often
    batch_size: int = Field(5000, ge=1)  # at most, records per MongoDB insert and offset commit
    max_seconds: float = Field(60.0, gt=0)  # drain budget per run; the rest waits for the next run
    aggregate_max_seconds: float = Field(60.0, gt=0)  # aggregation budget per run, lease wait included
    sessions_max_seconds: float = Field(60.0, gt=0)  # the sessions task's budget per run
    # past its budget, what a task may take before Airflow's execution_timeout stops it: start-up
    # (imports, the group join), the batch under way when the budget ran out, closing
    overrun_seconds: float = Field(60.0, gt=0)
    lease_seconds: float = Field(30.0, gt=0)  # aggregation lock, renewed every third of it while a run works
    # at most, events per aggregation batch: bounds each MongoDB operation, so the lease's
    # heartbeat gets through even on a large backlog (a run counts batch after batch)
    aggregate_batch_events: int = Field(10_000, ge=1)

    @property
    def drain_timeout_s(self) -> float:
        """The drain task's execution_timeout."""
        return self.max_seconds + self.overrun_seconds

    @property
    def dimensions_timeout_s(self) -> float:
        """The dimensions task's execution_timeout (its budget is the drain's, `max_seconds`)."""
        return self.max_seconds + self.overrun_seconds

    @property
    def aggregate_timeout_s(self) -> float:
        """The aggregate task's execution_timeout."""
        return self.aggregate_max_seconds + self.overrun_seconds

    @property
    def sessions_timeout_s(self) -> float:
        """The sessions task's execution_timeout."""
        return self.sessions_max_seconds + self.overrun_seconds

    @property
    def storing_abandoned_after_s(self) -> float:
        """A drain batch still being stored this long after it was opened belongs to a drain
        that is gone (Airflow stops a drain task by then): the aggregation counts its events
        through its own claims. The counts stay exact whatever this is; it sets how soon."""
        return self.drain_timeout_s


class DashboardSettings(BaseModel):
    """The live dashboard (components/dashboard): where it listens and how often it looks."""

    host: str = "127.0.0.1"
    port: int = 8050
    refresh_s: float = Field(5.0, gt=0)  # the stores are read, and the page refreshes, this often
    # a drain's insert can become readable a little after its StoredAt: the events stored up to
    # this long ago are read once more when this time has passed (the copies are dropped)
    events_settle_s: float = Field(30.0, ge=0)
    # the read model's DuckDB file (rollups and the syncs' cursors); default <run_dir>/dashboard/readmodel.duckdb
    read_model: Path | None = None
    memory_limit_mb: int = Field(256, ge=64)  # DuckDB's memory limit for the read model

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class AirflowSettings(BaseModel):
    """Where Airflow's API server and UI listen (embedded stack: `invoke up` runs Airflow)."""

    host: str = "127.0.0.1"
    port: int = 8080
    # for readers of its REST API (the dashboard) where Airflow asks for a login: a JWT
    # from its /auth/token. Unset: no header (the embedded Airflow on 127.0.0.1 needs none).
    api_token: SecretStr | None = None
    # The embedded Airflow's metadata database, in the stack's PostgreSQL (Airflow's default,
    # SQLite, is for development only).
    metadata_database: str = "airflow"

    @property
    def base_url(self) -> str:
        """How clients (and Airflow's own task runners) reach the API server."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class SparkSettings(BaseModel):
    # local[2]: in the process itself; spark://host:port: a standalone cluster (`invoke up --spark-cluster`)
    master: str = "local[2]"
    driver_memory: str = "1g"
    # on a cluster: each executor's heap and cores, and the cores an application takes at most
    # (spark.cores.max), so the streaming job and the notebooks run side by side instead of the
    # first one holding every core while the next waits
    executor_memory: str = "1g"
    executor_cores: int = Field(1, ge=1)
    cores_max: int = Field(2, ge=1)
    # "offline": the pinned hadoop-aws jars the project installs; "packages": resolve
    # `s3a_packages` through spark.jars.packages (needs a reachable Maven repository).
    jars_source: str = Field("offline", pattern="^(offline|packages)$")
    s3a_packages: str = "org.apache.hadoop:hadoop-aws:3.4.1"
    jars_dir: Path = REPO_ROOT / ".venv" / "spark-jars"


class StreamingSettings(BaseModel):
    """The Spark job: `PurchasedItem` into raw Parquet in the S3 bucket (components/streaming)."""

    # "python": the project's Kafka source (PySpark Python Data Source on kafka-python);
    # "kafka": Spark's own connector, resolved through spark.jars.packages (needs Maven).
    kafka_source: str = Field("python", pattern="^(python|kafka)$")
    output_path: str = "raw/purchases"  # inside the bucket; read it back with spark.read.parquet
    quarantine_path: str = "raw/purchases_quarantine"  # records that are not JSON or break the contract
    # Empty: <run_dir>/streaming/checkpoints/<output_path>, on local disk (atomic renames, and
    # ~1 s less per batch than on S3). Any Hadoop URI (s3a://, hdfs://) works too.
    checkpoint_location: str = ""
    starting_offsets: str = "earliest"  # for a new checkpoint only; later runs continue from it
    # one micro-batch, so one Parquet file per date, at most this often; 5 s keeps p95 freshness
    # (API 2xx -> readable in the lake) under 10 s, measured by `invoke bench`
    trigger_interval_s: float = Field(5.0, gt=0)
    max_records_per_trigger: int = Field(500_000, ge=1)  # caps a catch-up batch
    # how long the job's Kafka clients wait for a broker that does not answer (to connect, or
    # for a request); then the query fails, and is restarted from its checkpoint with backoff
    kafka_timeout_s: float = Field(30.0, gt=1)
    dedupe_window_minutes: int = Field(60, ge=1)  # a copy of an EventId published this soon after it is dropped
    state_partitions: int = Field(2, ge=1)  # dedupe state partitions; fixed by a checkpoint's first run


class EmbeddedSettings(BaseModel):
    """Only used when the project runs the servers itself."""

    # the S3 server's (SeaweedFS) own ports besides its S3 port (`s3.endpoint_url`'s), on the same
    # host: its master, volume server and filer, each with a gRPC port, and the S3 gateway's gRPC
    s3_master_port: int = 9333
    s3_master_grpc_port: int = 19333
    s3_volume_port: int = 9334
    s3_volume_grpc_port: int = 19334
    s3_filer_port: int = 9335
    s3_filer_grpc_port: int = 19335
    s3_grpc_port: int = 19000
    # the Spark standalone cluster (`invoke up --spark-cluster`): a master and its workers on
    # 127.0.0.1, from the pyspark install; the workers' own ports are chosen free by the system
    spark_master_port: int = 7077
    spark_master_webui_port: int = 8090  # the master's web UI and its JSON (/json/), the health check
    spark_workers: int = Field(2, ge=1)
    spark_worker_cores: int = Field(2, ge=1)  # per worker: room for one executor of two applications
    spark_worker_memory: str = "2g"
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    # the supervisor retries a process that dies while starting after 1, 2, ... s, this many
    # times; then it is started again every `rescue_after_s` for as long as it keeps failing
    start_retries: int = Field(10, ge=0)
    rescue_after_s: float = Field(60.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SHOPSTREAM_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    stack: StackMode = StackMode.embedded
    run_dir: Path = REPO_ROOT / ".run"

    kafka: KafkaSettings = KafkaSettings()
    mongo: MongoSettings = MongoSettings()
    s3: S3Settings = S3Settings()
    postgres: PostgresSettings = PostgresSettings()
    api: ApiSettings = ApiSettings()
    generator: GeneratorSettings = GeneratorSettings()
    batch: BatchSettings = BatchSettings()
    airflow: AirflowSettings = AirflowSettings()
    dashboard: DashboardSettings = DashboardSettings()
    spark: SparkSettings = SparkSettings()
    streaming: StreamingSettings = StreamingSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()

    @property
    def journal_dir(self) -> Path:
        """Where the API keeps its acknowledgement journal and ledger."""
        return self.api.journal_dir or self.run_dir / "api" / "journal"

    @property
    def write_keys_file(self) -> Path:
        """Where the API's write keys are kept (hashes only; `python -m shopstream.write_keys`)."""
        return self.api.keys_file or self.run_dir / "api" / "write-keys.json"

    @property
    def client_keys_dir(self) -> Path:
        """Where the stack keeps the plaintext of the keys it creates for its own clients (0600)."""
        return self.run_dir / "keys"

    @property
    def read_model_path(self) -> Path:
        """Where the dashboard keeps its read model."""
        return self.dashboard.read_model or self.run_dir / "dashboard" / "readmodel.duckdb"

    def to_env(self) -> dict[str, str]:
        """These settings as SHOPSTREAM_* variables, to hand to a child process."""
        env: dict[str, str] = {}

        def put(prefix: str, model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, BaseModel):
                    put(f"{prefix}{name.upper()}__", value)
                    continue
                if value is None:  # unset stays unset
                    continue
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                elif isinstance(value, Enum):
                    value = value.value
                elif isinstance(value, list | tuple):  # read back as JSON
                    value = json.dumps([str(v) for v in value])
                env[f"{prefix}{name.upper()}"] = str(value)

        put("SHOPSTREAM_", self)
        return env


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests build their own `Settings(...)` instead."""
    return Settings()
