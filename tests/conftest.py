"""Shared fixtures: one embedded stack per test session, on free ports, in a temp folder.

Tests never touch the developer's `.run/` stack or its ports, so `invoke test`
works while `invoke up` is running.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path

# Before anything imports airflow: a throw-away AIRFLOW_HOME (its SQLite metadata DB),
# so `dag.test()` in the tests never touches a developer's Airflow.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="shopstream-airflow-test-")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "components" / "dags")

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from shopstream.settings import REPO_ROOT, Settings
from shopstream_stack.isolated import free_port, isolated_settings
from shopstream_stack.kafka import KafkaBroker
from shopstream_stack.service import Service
from shopstream_stack.stack import services
from shopstream_stack.supervision import Supervisor

make_settings = isolated_settings  # the tests' name for it

# The longest test files, longest first, as measured on the 2-core CI machine (each several
# minutes). `invoke test` hands whole files to its workers in collection order, so these go
# first and the short files fill in behind them, instead of one long file starting last and
# running alone at the end.
LONGEST_FIRST = [
    "test_streaming.py",
    "test_chaos.py",
    "test_spark_cluster.py",
    "test_streaming_recovery.py",
    "test_audit.py",
    "test_faults.py",
    "test_airflow_runtime.py",
    "test_analysis_notebooks.py",
    "test_dashboard.py",
    "test_offset_rewinds.py",
    "test_journal.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (the order inside a file is kept)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@contextmanager
def own_broker(settings: Settings, prefix: str) -> Iterator[SimpleNamespace]:
    """A broker of a test module's own (free port, own folder), beside the session's other
    servers, and a run folder of its own: a module that kills or rewinds its broker harms
    no other test. Yields `settings` (pointing at it) and `broker`."""
    run_dir = Path(tempfile.mkdtemp(prefix=prefix))
    run_dir.chmod(0o755)
    broker_cfg = make_settings(run_dir / "broker")
    broker = KafkaBroker(broker_cfg)
    try:
        broker.start()
        cfg = settings.model_copy(update={"kafka": broker_cfg.kafka, "run_dir": run_dir / "run"})
        yield SimpleNamespace(settings=cfg, broker=broker)
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def broker_back(broker: KafkaBroker) -> None:
    """Start a stopped broker again and wait until it answers."""
    broker.start()
    assert broker.healthy(), "the broker did not come back"


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    # Not pytest's tmp_path: that is private to root (0700), and PostgreSQL runs as
    # the `postgres` user, which must be able to reach its data folder.
    run_dir = Path(tempfile.mkdtemp(prefix="shopstream-test-"))
    run_dir.chmod(0o755)
    yield make_settings(run_dir / "run")
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack(settings) -> Iterator[dict[str, Service]]:
    """Every embedded server, started once for the session and stopped at the end."""
    svcs = services(settings)
    try:
        for svc in svcs:
            svc.start()
        yield {s.name: s for s in svcs}
    finally:
        for svc in reversed(svcs):
            svc.stop()
        # and whatever a failed test left under this stack's supervisord (a streaming job,
        # say): supervisord stops it, then itself, so nothing outlives the session
        Supervisor(settings).shutdown()


class ServerThread:
    """A real uvicorn server for an ASGI app, on a free port, in a background thread."""

    def __init__(self, app, forwarded_allow_ips: list | None = None) -> None:
        import threading

        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        allowed = None if forwarded_allow_ips is None else [str(a) for a in forwarded_allow_ips]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", forwarded_allow_ips=allowed)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def api_server(stack, settings) -> Iterator[ServerThread]:
    """The ingestion API (real uvicorn) publishing to the session's broker. Like the stack's, it
    trusts X-Forwarded-For from this host (`api.trusted_proxies`), so a test can name a client's
    address with it; without the header the client is the peer itself."""
    from shopstream_api.main import create_app

    with ServerThread(create_app(settings), forwarded_allow_ips=settings.api.trusted_proxies) as server:
        yield server


@pytest.fixture(scope="session")
def spark(settings):
    """One SparkSession for the whole run, built by the job's own factory (s3a jars included):
    a JVM outlives `stop()`, so a second session with other jars could not be made."""
    from shopstream.adapters.spark import spark_session

    session = spark_session(settings, "shopstream-tests")
    yield session
    session.stop()
    # py4j says goodbye from __del__ at exit, after pytest has closed its capture streams
    logging.getLogger("py4j").setLevel(logging.WARNING)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The next offset of every partition of a topic (where a new record would land)."""
    from shopstream.adapters.kafka import end_offsets as ends

    return ends(settings.kafka, topic)


def read_from(settings: Settings, topic: str, since: dict[int, int] | None = None) -> list:
    """Every record of `topic` from the given offset of each partition (by default, from the
    beginning of every partition) up to its end now."""
    import time

    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in (since or range(settings.kafka.partitions))]
        consumer.assign(tps)
        if since is None:
            consumer.seek_to_beginning(*tps)
        else:
            for tp in tps:
                consumer.seek(tp, since[tp.partition])
        ends = consumer.end_offsets(tps)
        out, deadline = [], time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for records in consumer.poll(timeout_ms=1000).values():
                out.extend(r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)])
        return out
    finally:
        consumer.close()


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """Airflow's metadata DB (SQLite) in the throw-away AIRFLOW_HOME set at the top of this file."""
    from airflow.utils import db

    db.resetdb()


def job_settings(settings: Settings, name: str, own_topic: bool = False, **streaming) -> Settings:
    """The session's settings with this test's own output, quarantine and checkpoint, reading
    the topic from its current end (records of other tests are not this test's business).
    With `own_topic`, a PurchasedItem topic of its own too: for tests that write what is not
    a purchase, which other tests reading the session's topic must never see."""
    run = f"{name}-{uuid.uuid4().hex[:8]}"
    if own_topic:
        from shopstream.adapters.kafka import ensure_topics

        kafka = settings.kafka.model_copy(update={"purchases_topic": f"PurchasedItem-{run}"})
        ensure_topics(kafka)
        settings = settings.model_copy(update={"kafka": kafka})
    topic = settings.kafka.purchases_topic
    start = {topic: {str(p): o for p, o in end_offsets(settings, topic).items()}}
    st = settings.streaming.model_copy(
        update={
            "output_path": f"tests/{run}/purchases",
            "quarantine_path": f"tests/{run}/quarantine",
            "starting_offsets": json.dumps(start),
            **streaming,
        }
    )
    return settings.model_copy(update={"streaming": st})


def run_until_caught_up(spark, settings: Settings) -> list[dict]:
    """The job's query with Trigger.AvailableNow: everything in the topic now, then stop;
    returns its batch progress reports."""
    from shopstream_streaming import job
    from shopstream_streaming.failures import is_transient
    from shopstream_streaming.restarts import error_text

    q = job.start(spark, settings, available_now=True)
    earlier: list = []  # the reports of the runs that failed
    for restart in range(3):  # as the job does: a transient failure restarts the query
        assert q.awaitTermination(180), f"{q.name} did not finish"
        if q.exception() is None or not is_transient(error_text(q.exception())) or restart == 2:
            break
        logging.warning("query %s restarted after: %s", q.name, error_text(q.exception())[:300])
        earlier += q.recentProgress
        q = job.start(spark, settings, available_now=True)
    assert q.exception() is None, q.exception()
    return earlier + list(q.recentProgress)


def invoke(settings: Settings, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run an invoke task of this repository as a user would, against the settings' stack."""
    env = {**os.environ, **settings.to_env()}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def invoke_status(settings: Settings, timeout: float = 120) -> tuple[int, dict[str, dict]]:
    """`invoke status --json`: its exit code, and each service's row by name."""
    out = invoke(settings, "status", "--json", timeout=timeout)
    assert out.stdout.strip(), out.stderr
    return out.returncode, {r["service"]: r for r in json.loads(out.stdout)["services"]}
