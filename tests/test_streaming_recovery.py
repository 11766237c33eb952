"""The streaming job rides out broker outages (issue 14): a query that fails because the
broker (or S3) did not answer is restarted from its checkpoint, with backoff, in the same
process; anything else stops the job non-zero, never half-alive; the status file says
which, and every record lands in the lake or the quarantine once across the restarts.

- Pure: tenacity's backoff, which failures count as transient and the line they are
  known by, a query runner driven by a fake query and a fake clock, the health verdicts
  on status files old and new.
- Against a broker of this module's own (free port, own folder) and the session's S3:
  one job started while the broker is down, then a `kill -9` of the broker under it,
  kept down until a query has failed, then restarted.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaProducer

from conftest import broker_back as up
from conftest import job_settings, make_settings, own_broker
from shopstream import locations
from shopstream.adapters.kafka import end_offsets
from shopstream.settings import Settings
from shopstream.streaming_status import read_status, status_path, unhealthy_reason
from shopstream_api.examples import PURCHASE_EXAMPLE
from shopstream_stack.streaming import StreamingService
from shopstream_streaming.failures import headline, is_transient
from shopstream_streaming.restarts import QueryRunner, backoff_s
from test_faults import kill_9, wait_for

# What Spark reports, as seen on the embedded stack (module paths shortened)
TASK_BOOTSTRAP = """[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
  File "/repo/components/streaming/shopstream_streaming/kafka_source.py", line 281, in read
    consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/venv/site-packages/kafka/net/manager.py", line 168, in _do_bootstrap
    raise Errors.KafkaTimeoutError(
kafka.errors.KafkaTimeoutError: KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092
 SQLSTATE: 38000
=== Streaming Query ===
Identifier: quarantine [id = ed87f5e4-57da-45bb-9075-73f9608efdb1, runId = 689e15ba-8ba0-41be-917d-2b326ec1dc16]
Current Committed Offsets: {}"""  # noqa: E501 - verbatim Spark messages
DRIVER_OFFSETS = """[PYTHON_STREAMING_DATA_SOURCE_RUNTIME_ERROR] Failed when Python streaming data source perform \
reportLatestOffset: Traceback (most recent call last):
  File "/repo/components/streaming/shopstream_streaming/kafka_source.py", line 256, in reportLatestOffset
kafka.errors.KafkaTimeoutError: KafkaTimeoutError: Failed to get offsets by timestamps in 30000 ms
 SQLSTATE: 38000
=== Streaming Query ==="""
READ_TIMEOUT = """[PYTHON_EXCEPTION] An exception was thrown from the Python worker: Traceback (most recent call last):
  File "/repo/components/streaming/shopstream_streaming/kafka_source.py", line 292, in read
TimeoutError: KafkaRange(PurchasedItem-0 [5, 10)): no records from 127.0.0.1:9092 for 120 s at offset 7
 SQLSTATE: 38000"""
S3_DOWN = """[TASK_WRITE_FAILED] Task failed while writing rows to s3a://shopstream-lake/raw/purchases. SQLSTATE: 58030
=== Streaming Query ===
Identifier: purchases [id = 7f47fda8-aecb-4744-9f93-07507738cf4a, runId = 82691a5a-0221-4ab6-9627-d0f82d5595c9]

JVM stacktrace:
org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to s3a://shopstream-lake/raw/purchases.
	at org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:823)
Caused by: com.amazonaws.SdkClientException: Unable to execute HTTP request: Connect to 127.0.0.1:9000 [/127.0.0.1] failed: Connection refused
	at com.amazonaws.http.AmazonHttpClient$RequestExecutor.handleRetryableException(AmazonHttpClient.java:1219)
Caused by: java.net.ConnectException: Connection refused
	at java.base/sun.nio.ch.Net.pollConnect(Native Method)"""  # noqa: E501 - verbatim Spark messages
S3_CHECK = """An error occurred while calling o2187.exists.
: org.apache.hadoop.fs.s3a.AWSClientIOException: getFileStatus on s3a://shopstream-lake/raw/purchases/_spark_metadata: com.amazonaws.SdkClientException: Unable to execute HTTP request: Connect to 127.0.0.1:9000 [/127.0.0.1] failed: Connection refused
	at org.apache.hadoop.fs.s3a.S3AUtils.translateException(S3AUtils.java:208)"""  # noqa: E501 - verbatim Spark messages
DATA_LOSS = """[PYTHON_STREAMING_DATA_SOURCE_RUNTIME_ERROR] Failed when Python streaming data source perform \
latestOffset: Traceback (most recent call last):
  File "/repo/components/streaming/shopstream_streaming/kafka_source.py", line 241, in _data_loss
    raise RuntimeError(f"{msg}. Set failOnDataLoss=false to skip to what is there.")
RuntimeError: PurchasedItem-0: the checkpoint is at offset 5, the broker has [10, 20); records were deleted or \
the topic was recreated. Set failOnDataLoss=false to skip to what is there.
 SQLSTATE: 38000"""
MISMATCH = (
    "CheckpointMismatch: s3a://shopstream-lake/raw/purchases was written with a checkpoint that is not at "
    "/run/streaming/checkpoints/raw/purchases/purchases. Restore that checkpoint, or delete the output and "
    "the checkpoint together and start again."
)
JVM_GONE = (
    "Py4JNetworkError: An error occurred while trying to connect to the Java server (127.0.0.1:41231)\n"
    "ConnectionRefusedError: [Errno 111] Connection refused"
)


# == pure ==================================================================================
def test_the_backoff_doubles_from_1_s_and_stays_at_30_s():
    assert [backoff_s(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 30, 30, 30, 30]


@pytest.mark.parametrize(
    ("text", "transient", "first_line"),
    [
        (TASK_BOOTSTRAP, True, "KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092"),
        (DRIVER_OFFSETS, True, "KafkaTimeoutError: Failed to get offsets by timestamps in 30000 ms"),
        (
            READ_TIMEOUT,
            True,
            "TimeoutError: KafkaRange(PurchasedItem-0 [5, 10)): no records from 127.0.0.1:9092 for 120 s at offset 7",
        ),
        (
            S3_DOWN,
            True,
            "[TASK_WRITE_FAILED] Task failed while writing rows to s3a://shopstream-lake/raw/purchases. "
            "(caused by java.net.ConnectException: Connection refused)",
        ),
        (
            S3_CHECK,
            True,
            "AWSClientIOException: getFileStatus on s3a://shopstream-lake/raw/purchases/_spark_metadata: "
            "com.amazonaws.SdkClientException: Unable to execute HTTP request: Connect to 127.0.0.1:9000 "
            "[/127.0.0.1] failed: Connection refused",
        ),
        (
            DATA_LOSS,
            False,
            "RuntimeError: PurchasedItem-0: the checkpoint is at offset 5, the broker has [10, 20); "
            "records were deleted or the topic was recreated. Set failOnDataLoss=false to skip to "
            "what is there.",
        ),
        (MISMATCH, False, MISMATCH),
        (
            JVM_GONE,
            False,
            "Py4JNetworkError: An error occurred while trying to connect to the Java server (127.0.0.1:41231)",
        ),
        ("ZeroDivisionError: division by zero", False, "ZeroDivisionError: division by zero"),
    ],
    ids=[
        "task-bootstrap",
        "driver-offsets",
        "read-timeout",
        "s3-write",
        "s3-check",
        "data-loss",
        "checkpoint-mismatch",
        "jvm-gone",
        "a-bug",
    ],
)
def test_which_failures_waiting_cures_and_the_line_they_are_known_by(text, transient, first_line):
    assert is_transient(text) is transient
    assert headline(text) == first_line


class FakeQuery:
    """What the runner reads of a StreamingQuery."""

    def __init__(self) -> None:
        self.error: Exception | None = None
        self.lastProgress: dict | None = None

    @property
    def isActive(self) -> bool:
        return self.error is None

    def exception(self) -> Exception | None:
        return self.error


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Messages(logging.Handler):
    """The job's log records (the suite runs with `-p no:logging`, so no caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    logger, handler = logging.getLogger("shopstream_streaming"), Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_a_runner_restarts_a_query_after_transient_failures_with_backoff_and_gives_up_on_others(warnings_logged):
    clock, started, refusals = Clock(), [], []

    def start() -> FakeQuery:
        if refusals:
            raise refusals.pop(0)
        started.append(FakeQuery())
        return started[-1]

    runner = QueryRunner("purchases", start, clock)
    runner.start()
    assert runner.state == "starting"
    runner.settle(10)
    assert (runner.state, runner.restarts, len(started)) == ("running", 0, 1)

    started[-1].error = RuntimeError(TASK_BOOTSTRAP)
    runner.step()
    assert (runner.state, runner.retry_at, runner.error) == (
        "restarting",
        1001.0,
        "KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092",
    )
    assert (
        "query purchases failed: KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092; "
        "restarting it from its checkpoint in 1 s"
    ) in warnings_logged
    runner.step()  # not due yet
    assert len(started) == 1
    clock.now = 1001.0
    refusals.append(RuntimeError(S3_DOWN))  # the restart itself fails: S3 does not answer
    runner.step()
    assert runner.state == "restarting" and runner.restarts == 1
    runner.settle(10)
    assert (runner.state, runner.retry_at, runner.failures) == ("restarting", 1003.0, 2)  # 2 s after the 2nd
    assert any("restarting it from its checkpoint in 2 s" in m for m in warnings_logged)
    clock.now = 1003.0
    runner.step()
    runner.settle(10)
    assert (runner.state, runner.restarts, len(started)) == ("running", 2, 2)
    assert runner.failures == 2  # no progress yet: a failure now would wait 4 s
    started[-1].lastProgress = {"batchId": 7}
    runner.step()
    assert runner.failures == 0  # it ran again: the next failure waits 1 s again
    assert "query purchases: restarting from its checkpoint (restart 2, after " in "\n".join(warnings_logged)

    started[-1].error = RuntimeError(DATA_LOSS)  # waiting cannot cure this one
    runner.step()
    assert runner.state == "failed" and runner.fatal.startswith("RuntimeError: PurchasedItem-0: the checkpoint")
    clock.now = 2000.0
    runner.step()
    assert len(started) == 2  # never started again in this process

    def refuse() -> FakeQuery:
        raise RuntimeError(MISMATCH)

    mismatch = QueryRunner("quarantine", refuse, clock)
    mismatch.start()
    mismatch.settle(10)
    assert mismatch.state == "failed" and mismatch.restarts == 0


def test_the_status_says_a_query_is_down_while_it_restarts_and_old_status_files_still_read():
    settings = make_settings(Path(tempfile.gettempdir()) / "unused")
    now = 5000.0
    running = {"active": True, "trigger_active": False, "progress_at": now - 2}
    old = {"pid": 1, "updated_at": now - 1, "queries": {"purchases": running, "quarantine": running}}
    assert unhealthy_reason(old, settings, now) is None  # written before restarts existed
    new = {
        **running,
        "state": "running",
        "started_at": now - 50,
        "restarts": 0,
        "error": None,
        "failed_at": None,
        "next_restart_at": None,
    }
    status = {**old, "restarts": 0, "queries": {"purchases": new, "quarantine": new}}
    assert unhealthy_reason(status, settings, now) is None

    def reason(**purchases) -> str | None:
        return unhealthy_reason(
            {**status, "queries": {"purchases": {**new, **purchases}, "quarantine": new}}, settings, now
        )

    error = "KafkaTimeoutError: Unable to bootstrap from 127.0.0.1:9092"
    assert reason(state="restarting", active=False, restarts=2, error=error, next_restart_at=now + 4) == (
        f"query purchases is restarting after 2 restart(s) (next start in 4 s): {error}"
    )
    assert reason(state="restarting", active=False, restarts=3, error=error) == (
        f"query purchases is restarting after 3 restart(s) (starting again): {error}"
    )
    # started again, but healthy only once it has finished a batch
    assert reason(restarts=3, error=error, progress_at=None, trigger_active=True) == (
        f"query purchases was restarted after a failure and has not finished a batch since: {error}"
    )
    assert reason(restarts=3, error=error) is None  # the last failure is kept, for the record
    assert reason(state="failed", active=False, error="RuntimeError: records were deleted").startswith(
        "query purchases failed and is not restarted in this process"
    )
    # in a batch for minutes: a store that does not answer, not a busy job
    assert reason(trigger_active=True, progress_at=now - 200) == "query purchases has been in one batch for 200 s"
    assert reason(trigger_active=True, progress_at=now - 30) is None


def ended(log: str) -> str:
    """What a job's log says of why a process ended: its errors and its last lines."""
    errors = [ln for ln in log.splitlines() if " ERROR " in ln or " CRITICAL " in ln or "exit" in ln.lower()]
    return "\n".join(errors[-20:]) + "\n...\n" + log[-3000:]


# == against a broker of this module's own ===================================================
@pytest.fixture(scope="module")
def own(stack, settings):
    """A broker of this module's own, beside the session's S3."""
    with own_broker(settings, "shopstream-recovery-") as own:
        yield own


def purchase_value(event_id: str) -> bytes:
    return json.dumps({**PURCHASE_EXAMPLE, "EventId": event_id, "IngestedAt": "2026-11-22T10:21:31.5Z"}).encode()


def publish(cfg: Settings, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    try:
        for f in [producer.send(cfg.kafka.purchases_topic, key=b"user-r", value=v) for v in values]:
            f.get(30)
    finally:
        producer.close()


def job_status(cfg: Settings) -> dict:
    return read_status(status_path(cfg)) or {"queries": {}}


def caught_up(cfg: Settings) -> bool:
    """The job's query's last batch ends at the topic's end."""
    topic = cfg.kafka.purchases_topic
    ends = end_offsets(cfg.kafka, topic)
    queries = job_status(cfg)["queries"]
    return len(queries) == 1 and all(
        (q.get("end_offset") or {}).get(topic, {}).get(str(p), -1) >= e
        for q in queries.values()
        for p, e in ends.items()
    )


def failed_since(cfg: Settings, t: float) -> dict[str, dict]:
    """The queries whose last failure came after `t` (wall clock)."""
    return {n: q for n, q in job_status(cfg)["queries"].items() if (q.get("failed_at") or 0) > t}


def lake_ids(spark, cfg: Settings) -> Counter:
    """EventIds in the lake, with their copies."""
    return Counter(r.EventId for r in spark.read.parquet(locations.output_url(cfg)).select("EventId").collect())


def quarantined_values(spark, cfg: Settings) -> Counter:
    """Raw values in the quarantine, with their copies."""
    return Counter(bytes(r.Value) for r in spark.read.parquet(locations.quarantine_url(cfg)).select("Value").collect())


@pytest.mark.services
@pytest.mark.timeout(900)
def test_a_job_waits_for_a_broker_down_at_its_start_then_rides_out_its_kill_9_and_writes_everything_once(own, spark):
    # the default Kafka timeout (30 s): with 10 s, a busy machine once saw the job end and come
    # back as a new process (cause not yet known; see the assertion on the pid below)
    cfg = job_settings(own.settings, "broker-outages", own_topic=True, trigger_interval_s=1.0)
    tag = uuid.uuid4().hex[:6]
    waited = [f"waited-{tag}-{i}" for i in range(20)]
    after = [f"after-{tag}-{i}" for i in range(30)]
    garbage = {
        "waited": [b"{garbage waited " + tag.encode()],
        "after": [b"{garbage after %d " % i + tag.encode() for i in range(3)],
    }
    publish(cfg, [purchase_value(e) for e in waited] + garbage["waited"])
    own.broker.stop()  # graceful: the topic and its records are kept (the kill below loses nothing of them)
    service = StreamingService(cfg)
    proc = service.procs()[0]
    try:
        # 1. started while the broker is down: a query fails, and the same process waits for it
        started = time.time()
        service.supervisor.register(service.name, [proc])
        proc.start()  # not service.start(), which waits for a healthy job
        wait_for("a query to fail on the missing broker", lambda: failed_since(cfg, started), 300)
        assert proc.alive(), "the job gave up instead of waiting for the broker"
        assert "restart" in (service.problem() or ""), service.problem()
        up(own.broker)
        back = time.monotonic()
        wait_for("the job healthy and caught up", lambda: service.healthy() and caught_up(cfg), 420)
        waited_s = time.monotonic() - back
        pid, restarts_at_start = proc.pid(), job_status(cfg)["restarts"]
        assert restarts_at_start >= 1

        # 2. kill -9 of the broker under the running job, kept down until a query has failed
        killed = time.time()
        kill_9(own.broker)
        own.broker.stop()  # the stack's supervisor would start it again at once: keep it down
        wait_for("a query to fail on the killed broker", lambda: failed_since(cfg, killed), 300)
        down = time.time() - killed
        problem = service.problem()
        assert problem is not None and "restart" in problem, problem  # unhealthy while a query is down
        up(own.broker)
        back = time.monotonic()
        publish(cfg, [purchase_value(e) for e in after] + garbage["after"])
        wait_for("the job healthy again and past the new records", lambda: service.healthy() and caught_up(cfg), 420)
        recovered = time.monotonic() - back

        assert proc.pid() == pid, f"recovered by a new process, not in-process:\n{ended(proc.log_file.read_text())}"
        status = job_status(cfg)
        failed = failed_since(cfg, killed)
        errors = {n: q["error"] for n, q in failed.items()}  # the broker gone, in whichever call noticed it first
        assert failed and all(is_transient(e) for e in errors.values()), f"{errors}\n{ended(proc.log_file.read_text())}"
        assert {q["state"] for q in status["queries"].values()} == {"running"}
        assert status["restarts"] == sum(q["restarts"] for q in status["queries"].values()) > restarts_at_start
        log = proc.log_file.read_text()
        for name in failed:
            assert log.count(f"WARNING shopstream_streaming: query {name} failed: ") >= 2, name  # once per outage
            assert f"WARNING shopstream_streaming: query {name}: restarting from its checkpoint (restart " in log
    finally:
        service.stop()
        up(own.broker)

    lake, quarantine = lake_ids(spark, cfg), quarantined_values(spark, cfg)
    assert set(lake) == set(waited) | set(after) and set(lake.values()) == {1}, lake.most_common(3)
    assert set(quarantine) == set(garbage["waited"] + garbage["after"]) and set(quarantine.values()) == {1}
    print(
        f"healthy {waited_s:.0f} s after a broker down at start came up; killed, down {down:.0f} s until a query "
        f"failed; healthy and caught up {recovered:.0f} s after its restart; restarts {status['restarts']} "
        f"({errors})"
    )
