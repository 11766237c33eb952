"""`invoke stream` / `python -m shopstream_streaming`: run the streaming job in the foreground.

The first Ctrl-C or SIGTERM stops after the current batch (a batch that starts in that
instant is abandoned and re-run from the checkpoint at the next start, never half
written); a second one stops at once. Exit code 1 if a query failed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from shopstream.settings import Settings

from .status import job_folder, offset_positions, rewinds_recorded, rows_written, status_path, write_status

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


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def query_status(q) -> dict[str, Any]:
    progress, status = q.lastProgress, q.status
    return {
        "id": str(q.id),
        "active": q.isActive,
        "trigger_active": bool(status.get("isTriggerActive")),
        "message": status.get("message"),
        "batch_id": progress["batchId"] if progress else None,
        "progress_at": _epoch(progress["timestamp"]) if progress else None,
        "input_rows": progress["numInputRows"] if progress else 0,
        "output_rows": rows_written(progress) if progress else 0,
        "rows_per_s": round(progress.get("processedRowsPerSecond") or 0.0, 1) if progress else 0.0,
        "batch_ms": progress["durationMs"].get("triggerExecution") if progress else None,
        # where the last batch ended in Kafka ({"topic": {"partition": next offset}}): the job's lag
        "end_offset": offset_positions(progress["sources"][0].get("endOffset"))
        if progress and progress.get("sources") else None,
    }


def _log_new_batches(queries, seen: dict[str, int]) -> None:
    for q in queries:
        for p in q.recentProgress:
            if p["batchId"] <= seen.get(q.name, -1):
                continue
            seen[q.name] = p["batchId"]
            if p["numInputRows"]:
                log.info("%s: batch %d, %d records read, %s written in %d ms", q.name, p["batchId"],
                         p["numInputRows"], rows_written(p), p["durationMs"].get("triggerExecution", 0))
            late = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
            if late:  # never expected: records published more than the dedupe window after newer ones
                log.warning("%s: batch %d dropped %d records older than the dedupe watermark",
                            q.name, p["batchId"], late)


def supervise(queries, settings: Settings, stop: StopRequest, seen: dict[str, int]) -> int:
    """Keep the status file fresh and log each batch until asked to stop, a query fails,
    or all are done (--available-now)."""
    path = status_path(settings)
    while True:
        write_status(path, {"pid": os.getpid(), "updated_at": time.time(), "stopping": stop.event.is_set(),
                            "queries": {q.name: query_status(q) for q in queries},
                            "rewinds": rewinds_recorded(settings)})  # offset rewinds recorded (shopstream.rewinds)
        _log_new_batches(queries, seen)
        failed = [q for q in queries if q.exception() is not None]
        if failed:
            for q in failed:
                log.error("query %s failed: %s", q.name, q.exception())
            return 1
        if stop.event.is_set() or not any(q.isActive for q in queries):
            return 0
        stop.event.wait(1.0)


def stop_between_batches(queries, timeout_s: float = 600.0) -> None:
    """Stop each query while it is between batches (waiting for the running one to end)."""
    for q in queries:
        deadline = time.monotonic() + timeout_s
        while q.isActive and q.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.05)
        q.stop()


def _lock(settings: Settings):
    """One job per run directory: a second one would write into the same checkpoints."""
    path: Path = job_folder(settings) / "job.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        log.error("the streaming job already runs for %s (pid %s); `invoke down` stops it, "
                  "`invoke logs streaming` shows it", settings.run_dir, handle.read().strip() or "?")
        raise typer.Exit(1) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@app.command()
def run(
    available_now: bool = typer.Option(False, "--available-now",
                                       help="write what the topic holds now, then exit (a backfill)"),
) -> None:
    """Stream PurchasedItem into raw Parquet on S3 until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    settings = Settings()
    lock = _lock(settings)
    from . import job
    from .session import spark_session

    t0 = time.monotonic()
    spark = spark_session(settings, "shopstream-streaming")
    stop = StopRequest()  # after the session: SparkContext installs a SIGINT handler of its own
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    queries, seen = [], {}
    try:
        queries = job.start(spark, settings, available_now=available_now)
        log.info("streaming %s -> %s (quarantine %s, checkpoints %s) after %.1f s; source %s, trigger %s",
                 settings.kafka.purchases_topic, job.output_url(settings), job.quarantine_url(settings),
                 job.checkpoint_url(settings, "*"), time.monotonic() - t0, settings.streaming.kafka_source,
                 "available-now" if available_now else f"{settings.streaming.trigger_interval_s:g} s")
        code = supervise(queries, settings, stop, seen)
        stop_between_batches(queries)
        _log_new_batches(queries, seen)
        log.info("stopped")
    except job.CheckpointMismatch as e:
        log.error("%s", e)
        code = 1
    except KeyboardInterrupt:
        log.info("stopping now; the running batch is re-run at the next start")
        code = 130
    finally:
        for q in queries:
            q.stop()
        spark.stop()
        lock.close()
    raise typer.Exit(code)


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="shopstream-stream")


if __name__ == "__main__":
    main()
