"""How often the embedded stack's supervisor restarted each process, since the stack started.

The stack's restart listener writes the file; `invoke status`, the dashboard and
`invoke chaos` read it. A restart is a start nobody asked for: after the process died,
or after a start that failed. Stacks run by someone else (compose, a cluster) have no
such file: their restarts are their orchestrator's to show.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from .settings import Settings

FILE = "restarts.json"


def restarts_path(settings: Settings) -> Path:
    return settings.run_dir / "supervisor" / FILE


def read_restarts(path: Path) -> dict[str, dict[str, Any]]:
    """{program: {"group": service, "restarts": n, "last_at": epoch s, "exits": n}}; {} without a file."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def by_service(path: Path) -> dict[str, dict[str, Any]]:
    """{service: {"restarts": n, "last_at": epoch s or None}}, summed over the service's processes."""
    out: dict[str, dict[str, Any]] = {}
    for entry in read_restarts(path).values():
        svc = out.setdefault(entry.get("group", "?"), {"restarts": 0, "last_at": None})
        svc["restarts"] += int(entry.get("restarts", 0))
        if entry.get("last_at") and (svc["last_at"] is None or entry["last_at"] > svc["last_at"]):
            svc["last_at"] = entry["last_at"]
    return out


def record(path: Path, group: str, program: str, *, restarted: bool = False, exited: bool = False) -> None:
    """Count one restart or one unexpected exit of `program` (one writer: the listener)."""
    found = read_restarts(path)
    entry = found.setdefault(program, {"group": group, "restarts": 0, "exits": 0, "last_at": None})
    if restarted:
        entry["restarts"] += 1
        entry["last_at"] = time.time()
    if exited:
        entry["exits"] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(found, indent=1, sort_keys=True))
    os.replace(tmp, path)  # a reader never sees half a file
