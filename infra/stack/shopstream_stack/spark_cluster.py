"""A Spark standalone cluster on this machine: a master and its workers, from the pyspark install.

`invoke up --spark-cluster` adds it to the stack and points `SHOPSTREAM_SPARK__MASTER` at it,
so the streaming job (and `invoke analyze --spark-cluster`) run their tasks in executors the
workers start, as on a cluster of machines. Each daemon is a JVM the stack's supervisord runs
(`spark-class`, which execs `java`); healthy means the master's JSON (its web UI's `/json/`)
lists every worker ALIVE.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from shopstream.settings import Settings

from .process import Proc
from .service import Endpoint, Service

HOST = "127.0.0.1"  # every daemon, and the driver that talks to them, stays on this machine
# the master's and each worker's own JVM (not the executors'): they only keep books, so a small
# heap, one GC thread and the quick JIT tier alone (less CPU at start, on a busy machine too)
DAEMON_MEMORY = "256m"
DAEMON_JAVA_OPTS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def master_url(settings: Settings) -> str:
    """What `SHOPSTREAM_SPARK__MASTER` is set to for the embedded cluster."""
    return f"spark://{HOST}:{settings.embedded.spark_master_port}"


def master_json_url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.embedded.spark_master_webui_port}/json/"


def master_state(settings: Settings, timeout_s: float = 2) -> dict:
    """The master's own view: its workers (state, cores, web UI), applications, running or completed."""
    response = httpx.get(master_json_url(settings), timeout=timeout_s)
    response.raise_for_status()
    return response.json()


class SparkCluster(Service):
    name = "spark-cluster"
    start_seconds = 5  # a JVM takes a while before it can fail

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # three JVMs, then the workers' registration: on a busy machine that takes a while
        self.timeout_s = max(self.timeout_s, 180.0)

    @property
    def address(self) -> str:
        e = self.settings.embedded
        return f"{master_url(self.settings)} ({e.spark_workers} workers; UI http://{HOST}:{e.spark_master_webui_port})"

    def endpoints(self) -> list[Endpoint]:
        e = self.settings.embedded
        return [
            Endpoint("master", HOST, e.spark_master_port, "SHOPSTREAM_EMBEDDED__SPARK_MASTER_PORT"),
            Endpoint("master", HOST, e.spark_master_webui_port, "SHOPSTREAM_EMBEDDED__SPARK_MASTER_WEBUI_PORT"),
        ]

    def procs(self) -> list[Proc]:
        e = self.settings.embedded
        spark_class = str(spark_home() / "bin" / "spark-class")
        env = {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": HOST,  # the web UIs bind here too, not on every interface
            "SPARK_DAEMON_MEMORY": DAEMON_MEMORY,
            "SPARK_DAEMON_JAVA_OPTS": DAEMON_JAVA_OPTS,
            "SPARK_LOG_DIR": str(self.folder),
            "SPARK_CONF_DIR": str(self.folder / "conf"),  # none of a Spark install's own conf
        }
        master = self._proc(
            "master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                HOST,
                "--port",
                str(e.spark_master_port),
                "--webui-port",
                str(e.spark_master_webui_port),
            ],
            env=env,
            drop_env_prefixes=("SPARK_", "PYSPARK_"),
        )
        workers = [
            self._proc(
                f"worker-{i}",
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    master_url(self.settings),
                    "--host",
                    HOST,
                    "--cores",
                    str(e.spark_worker_cores),
                    "--memory",
                    e.spark_worker_memory,
                    "--webui-port",
                    "0",  # any free port: the master's JSON says which
                    "--work-dir",
                    str(self.folder / f"worker-{i}"),  # executors' logs and fetched jars, per application
                ],
                env={
                    **env,
                    # an application's folder (its jars, its executors' logs) goes a day after it ended
                    "SPARK_WORKER_OPTS": "-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=86400",
                },
                drop_env_prefixes=("SPARK_", "PYSPARK_"),
                stop_family=True,  # its executors' JVMs and their Python workers go with it
            )
            for i in range(1, e.spark_workers + 1)
        ]
        return [master, *workers]

    def launch(self, proc: Proc) -> None:
        (self.folder / "conf").mkdir(parents=True, exist_ok=True)
        proc.start()

    def alive_workers(self) -> list[dict]:
        return [w for w in master_state(self.settings)["workers"] if w["state"] == "ALIVE"]

    def healthy(self) -> bool:
        return len(self.alive_workers()) >= self.settings.embedded.spark_workers


def on_cluster(settings: Settings) -> Settings:
    """The settings with `spark.master` pointing at the embedded cluster."""
    return settings.model_copy(update={"spark": settings.spark.model_copy(update={"master": master_url(settings)})})
