"""The streaming job's status file: what the running job last saw of its queries, and whether that is healthy.

The job writes it every second (`shopstream_streaming.cli`); `invoke status`
(the stack's StreamingService), `invoke chaos` and the dashboard read it. Per query: the
last batch, and how the query fares (`state`: starting, running, restarting after a
failure, failed, stopped; `restarts` so far, the last failure's first line in `error`,
`next_restart_at`); keys are only ever added, so older readers go on working. It also
holds how many offset rewinds the job's source has recorded (`rewinds`; the rewinds
themselves are in `rewinds.jsonl` beside it, see `shopstream.rewinds`). No pyspark
import here, so reading it costs nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from shopstream.locations import PURCHASES, job_folder
from shopstream.rewinds import read_lines, streaming_file
from shopstream.settings import Settings

FRESH_S = 15.0  # the job writes every second; older means it is stuck or gone
BUSY_S = 120.0  # one batch this long (no progress meanwhile): stuck on a store that does not answer


def status_path(settings: Settings) -> Path:
    return job_folder(settings) / "status.json"


def rewinds_recorded(settings: Settings) -> int:
    return len(read_lines(streaming_file(settings)))


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


def purchases_read(status: dict[str, Any] | None, topic: str) -> int | None:
    """How many records of `topic` the purchases query has read: the sum over partitions of its
    last batch's end offset; None before its first batch. The streaming lag that `invoke chaos`
    and the dashboard show is the topic's end minus this."""
    query = ((status or {}).get("queries") or {}).get(PURCHASES) or {}
    positions = offset_positions(query.get("end_offset"))
    if not positions or topic not in positions:
        return None
    return sum(int(v) for v in positions[topic].values())


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


def _down(name: str, q: dict[str, Any], now: float) -> str | None:
    """Why a query is down, from the keys the restarting job adds (None when it is not)."""
    state = q.get("state")
    if state == "failed":
        return f"query {name} failed and is not restarted in this process: {q.get('error')}"
    if state == "restarting":
        due = q.get("next_restart_at")
        when = f"next start in {max(0.0, due - now):.0f} s" if due else "starting again"
        return f"query {name} is restarting after {q.get('restarts', 0)} restart(s) ({when}): {q.get('error')}"
    if state == "starting":
        return f"query {name} is starting"
    if q.get("restarts") and q.get("progress_at") is None:  # no batch yet since the last restart
        return f"query {name} was restarted after a failure and has not finished a batch since: {q.get('error')}"
    return None


def unhealthy_reason(status: dict[str, Any] | None, settings: Settings, now: float | None = None) -> str | None:
    """None when every query is running and made progress lately (or is in a batch now,
    but not for longer than BUSY_S)."""
    now = time.time() if now is None else now
    if status is None:
        return "no status file yet"
    if now - status["updated_at"] > FRESH_S:
        return f"status not updated for {now - status['updated_at']:.0f} s"
    stale_s = max(60.0, 3 * settings.streaming.trigger_interval_s)
    for name, q in status["queries"].items():
        down = _down(name, q, now)
        if down:
            return down
        if not q["active"]:
            return f"query {name} is not running"
        since = q["progress_at"] or q.get("started_at")  # started_at: since the current run began
        if q["trigger_active"]:
            if since is not None and now - since > max(BUSY_S, 10 * settings.streaming.trigger_interval_s):
                return f"query {name} has been in one batch for {now - since:.0f} s"
            continue
        if q["progress_at"] is None:
            return f"query {name} has not finished a batch yet"
        if now - q["progress_at"] > stale_s:
            return f"query {name} reported no progress for {now - q['progress_at']:.0f} s"
    return None
