"""The job's status file: what the running job last saw of its queries, and whether that is healthy.

The job rewrites it every second; `invoke status` (StreamingService.healthy) reads it.
It also holds how many offset rewinds the job's source has recorded (`rewinds`; the
rewinds themselves are in `rewinds.jsonl` beside it, see `shopstream.rewinds`).
No pyspark import here, so reading it costs nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from shopstream.rewinds import STREAMING_FILE, read_lines
from shopstream.settings import Settings

FRESH_S = 15.0  # the job writes every second; older means it is stuck or gone


def job_folder(settings: Settings) -> Path:
    """Where the job keeps its status, lock and (by default) checkpoints: the service folder."""
    return settings.run_dir / "streaming"


def status_path(settings: Settings) -> Path:
    return job_folder(settings) / "status.json"


def rewinds_recorded(settings: Settings) -> int:
    return len(read_lines(job_folder(settings) / STREAMING_FILE))


def offset_positions(offset: Any) -> dict[str, dict[str, int]] | None:
    """The `{"<topic>": {"<partition>": offset}}` of a source offset from the query's progress
    (a dict, or its JSON text); keys that are not topics (the project's source adds "@marks"
    and "@from"; no topic name holds an "@") are left out."""
    if isinstance(offset, str):
        try:
            offset = json.loads(offset)
        except ValueError:
            return None
    if not isinstance(offset, dict):
        return None
    return {k: v for k, v in offset.items() if not k.startswith("@") and isinstance(v, dict)}


def rows_written(progress: dict[str, Any]) -> int | None:
    """The rows a batch wrote (observed by `job.written_rows`); None when not observed."""
    for metrics in (progress.get("observedMetrics") or {}).values():  # one observation per query
        return int(metrics["rows"])  # a pyspark Row: no .get
    return None


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Replace the file in one step, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=1, default=str))
    os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def unhealthy_reason(status: dict[str, Any] | None, settings: Settings, now: float | None = None) -> str | None:
    """None when every query is running and made progress lately (or is in a batch now)."""
    now = time.time() if now is None else now
    if status is None:
        return "no status file yet"
    if now - status["updated_at"] > FRESH_S:
        return f"status not updated for {now - status['updated_at']:.0f} s"
    stale_s = max(60.0, 3 * settings.streaming.trigger_interval_s)
    for name, q in status["queries"].items():
        if not q["active"]:
            return f"query {name} is not running"
        if q["trigger_active"]:
            continue
        if q["progress_at"] is None:
            return f"query {name} has not finished a batch yet"
        if now - q["progress_at"] > stale_s:
            return f"query {name} reported no progress for {now - q['progress_at']:.0f} s"
    return None
