"""A query's last batch as the status file holds it (`shopstream.streaming_status`: the
file's contract, path and health verdict, which the stack and the dashboard read too).

No pyspark import here: a StreamingQuery is only read through its attributes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shopstream.locations import PURCHASES, QUARANTINE
from shopstream.streaming_status import offset_positions


def rows_written(progress: dict[str, Any]) -> dict[str, int] | None:
    """The rows a batch wrote to each output (observed by `job.counted`: {"purchases": n,
    "quarantine": m}); None when not observed."""
    for metrics in (progress.get("observedMetrics") or {}).values():  # one observation per query
        return {name: int(metrics[name]) for name in (PURCHASES, QUARANTINE)}  # a pyspark Row: no .get
    return None


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


NO_RUN: dict[str, Any] = {
    "id": None,
    "active": False,
    "trigger_active": False,
    "message": None,
    "batch_id": None,
    "progress_at": None,
    "input_rows": 0,
    "output_rows": 0,
    "quarantined_rows": 0,
    "rows_per_s": 0.0,
    "batch_ms": None,
    "end_offset": None,
}


def query_status(q: Any) -> dict[str, Any]:
    """A StreamingQuery's last batch, as the status file holds it (NO_RUN before any run)."""
    if q is None:
        return dict(NO_RUN)
    progress, status = q.lastProgress, q.status
    written = (rows_written(progress) if progress else None) or {}
    return {
        "id": str(q.id),
        "active": q.isActive,
        "trigger_active": bool(status.get("isTriggerActive")),
        "message": status.get("message"),
        "batch_id": progress["batchId"] if progress else None,
        "progress_at": _epoch(progress["timestamp"]) if progress else None,
        "input_rows": progress["numInputRows"] if progress else 0,
        "output_rows": written.get(PURCHASES, 0),  # into the lake
        "quarantined_rows": written.get(QUARANTINE, 0),
        "rows_per_s": round(progress.get("processedRowsPerSecond") or 0.0, 1) if progress else 0.0,
        "batch_ms": progress["durationMs"].get("triggerExecution") if progress else None,
        # where the last batch ended in Kafka ({"topic": {"partition": next offset}}): the job's lag
        "end_offset": offset_positions(progress["sources"][0].get("endOffset"))
        if progress and progress.get("sources")
        else None,
    }
