"""`invoke stream` / `python -m shopstream_streaming`: run the streaming job in the foreground.

The query that fails because the broker or S3 did not answer is restarted from its
checkpoint (`restarts`), the first start included. Any other
failure stops the job at once with exit code 1, never leaving it half-alive: its
supervisor starts a fresh process. The first Ctrl-C or SIGTERM stops after the current
batch (a batch that starts in that instant is abandoned and re-run from the checkpoint
at the next start, never half written); a second one stops at once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import typer

from shopstream.locations import PURCHASES, QUARANTINE, checkpoint_url, job_folder, output_url, quarantine_url
from shopstream.settings import Settings
from shopstream.streaming_status import rewinds_recorded, status_path, write_status

from .restarts import QueryRunner
from .status import query_status, rows_written

log = logging.getLogger("shopstream_streaming")
app = typer.Typer(add_completion=False, help=__doc__)


class StopRequest:
    """Signal handler: the first signal asks for a stop between batches, the second now."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        log.info("%s: stopping after the current batch (again to stop now)", signal.Signals(signum).name)
        self.event.set()


def _log_new_batches(queries, seen: dict[str, int]) -> None:
    for q in queries:
        last = q.lastProgress  # one report a second, not the last 100 (recentProgress): idle costs less
        if last is None or last["batchId"] <= seen.get(q.name, -1):
            continue
        for p in [last] if last["batchId"] == seen.get(q.name, -1) + 1 else q.recentProgress:
            if p["batchId"] <= seen.get(q.name, -1):
                continue
            seen[q.name] = p["batchId"]
            if p["numInputRows"]:
                written = rows_written(p) or {}
                log.info(
                    "%s: batch %d, %d records read, %s written, %s quarantined in %d ms",
                    q.name,
                    p["batchId"],
                    p["numInputRows"],
                    written.get(PURCHASES),
                    written.get(QUARANTINE),
                    p["durationMs"].get("triggerExecution", 0),
                )
            late = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
            if late:  # never expected: records published more than the dedupe window after newer ones
                log.warning(
                    "%s: batch %d dropped %d records older than the dedupe watermark", q.name, p["batchId"], late
                )


def runner_status(r: QueryRunner) -> dict[str, Any]:
    """The query's last batch (`status.query_status`) and how it fares."""
    return {
        **query_status(r.query),
        "state": r.state,
        "started_at": r.started_at,
        "restarts": r.restarts,
        "error": r.error,
        "failed_at": r.failed_at,
        "next_restart_at": r.retry_at,
    }


def supervise(runners: list[QueryRunner], settings: Settings, stop: StopRequest, seen: dict[str, int]) -> int:
    """Every second: restart what failed, rewrite the status file, log new batches; until
    asked to stop (0), a query failed for good (1), or all are done (--available-now, 0)."""
    path = status_path(settings)
    while True:
        for r in runners:
            r.step(stopping=stop.event.is_set())
        write_status(
            path,
            {
                "pid": os.getpid(),
                "updated_at": time.time(),
                "stopping": stop.event.is_set(),
                "queries": {r.name: runner_status(r) for r in runners},
                "restarts": sum(r.restarts for r in runners),
                "rewinds": rewinds_recorded(settings),
            },
        )  # offset rewinds recorded (shopstream.rewinds)
        _log_new_batches([r.query for r in runners if r.query is not None], seen)
        if any(r.fatal for r in runners):
            return 1
        if stop.event.is_set() or all(r.state == "stopped" for r in runners):
            return 0
        stop.event.wait(1.0)


def stop_between_batches(queries, timeout_s: float = 600.0) -> None:
    """Stop each query while it is between batches (waiting for the running one to end)."""
    for q in queries:
        deadline = time.monotonic() + timeout_s
        while q.isActive and q.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_now([q])


def stop_now(queries) -> None:
    """Stop each query (a batch in flight is re-run from the checkpoint at the next start);
    bounded by spark.sql.streaming.stopTimeout, so a query stuck in a call cannot hold the job."""
    for q in queries:
        try:
            q.stop()
        except Exception as e:  # noqa: BLE001 - stopping anyway; the process exits next
            log.warning("query %s did not stop cleanly: %s", q.name, str(e).splitlines()[0] if str(e) else e)


def _lock(settings: Settings):
    """One job per run directory: a second one would write into the same checkpoints."""
    path: Path = job_folder(settings) / "job.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        log.error(
            "the streaming job already runs for %s (pid %s); `invoke down` stops it, `invoke logs streaming` shows it",
            settings.run_dir,
            handle.read().strip() or "?",
        )
        raise typer.Exit(1) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@app.command()
def run(
    available_now: bool = typer.Option(
        False, "--available-now", help="write what the topic holds now, then exit (a backfill)"
    ),
) -> None:
    """Stream PurchasedItem into raw Parquet on S3 until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    settings = Settings()
    lock = _lock(settings)
    from shopstream.adapters.spark import spark_session

    from . import job

    t0 = time.monotonic()
    spark = spark_session(settings, "shopstream-streaming")
    stop = StopRequest()  # after the session: SparkContext installs a SIGINT handler of its own
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runners = [QueryRunner(job.NAME, partial(job.start, spark, settings, available_now))]
    seen: dict[str, int] = {}
    try:
        for r in runners:
            r.start()
        log.info(
            "streaming %s -> %s (quarantine %s, checkpoint %s); session after %.1f s; source %s, trigger %s",
            settings.kafka.purchases_topic,
            output_url(settings),
            quarantine_url(settings),
            checkpoint_url(settings, job.NAME),
            time.monotonic() - t0,
            settings.streaming.kafka_source,
            "available-now" if available_now else f"{settings.streaming.trigger_interval_s:g} s",
        )
        code = supervise(runners, settings, stop, seen)
        for r in runners:
            r.settle(60.0)  # a start in flight: its query is stopped with the others
        queries = [r.query for r in runners if r.query is not None and r.query.isActive]
        if code == 0:
            stop_between_batches(queries)
        else:
            log.error("stopping: %s", "; ".join(f"query {r.name}: {r.fatal}" for r in runners if r.fatal))
            stop_now(queries)
        _log_new_batches([r.query for r in runners if r.query is not None], seen)
        log.info("stopped")
    except KeyboardInterrupt:
        log.info("stopping now; the running batch is re-run at the next start")
        code = 130
    finally:
        stop_now([r.query for r in runners if r.query is not None and r.query.isActive])
        spark.stop()
        lock.close()
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-stream")


if __name__ == "__main__":
    main()
