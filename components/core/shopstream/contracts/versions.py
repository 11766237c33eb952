"""The published contracts' versions and their committed JSON Schemas.

Each contract that leaves the process (what clients send, what the topics carry) has a
version, declared once in `VERSIONS`. The JSON Schema of every released version is kept
in `schemas/<Model>/v<N>.json` beside this module, so a consumer can read any record it
finds in a topic against the schema it was written under. Within a version a model may
only change compatibly (`compat.breaking_changes`: every record valid before is still
valid, no field removed); the file of the current version is then rewritten in place. A
breaking change needs the version raised: a new file, the old ones kept.

`invoke schemas` writes the current versions' files (`write`); `invoke schemas --check`
and the tests report what is out of date or breaking (`problems`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .compat import breaking_changes
from .dimensions import Customer, ProductInfo
from .events import UserEvent
from .purchases import Purchase
from .records import PurchaseRecord, UserEventRecord

VERSIONS: dict[type[BaseModel], int] = {
    UserEvent: 1,
    Purchase: 1,
    UserEventRecord: 1,
    PurchaseRecord: 1,
    ProductInfo: 1,
    Customer: 1,
}
"""The current version of each published contract: raise it for a breaking change."""

SCHEMA_DIR = Path(__file__).parent / "schemas"
_FILE = re.compile(r"v([1-9][0-9]*)\.json")


def path_of(name: str, version: int, root: Path = SCHEMA_DIR) -> Path:
    return root / name / f"v{version}.json"


def render(schema: dict[str, Any]) -> str:
    """A schema as its file holds it (stable, so a diff shows what changed)."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def released(root: Path = SCHEMA_DIR) -> dict[str, dict[int, Path]]:
    """Every committed schema file: model name -> version -> file."""
    found: dict[str, dict[int, Path]] = {}
    for file in sorted(root.glob("*/v*.json")):
        m = _FILE.fullmatch(file.name)
        if m:
            found.setdefault(file.parent.name, {})[int(m.group(1))] = file
    return {name: dict(sorted(versions.items())) for name, versions in found.items()}


def current() -> dict[str, tuple[int, dict[str, Any]]]:
    """Each contract's name -> (its current version, its schema as the model generates it now)."""
    return {m.__name__: (v, m.model_json_schema()) for m, v in VERSIONS.items()}


def problems(root: Path = SCHEMA_DIR) -> tuple[list[str], list[str]]:
    """(breaks, stale): what no `invoke schemas` can fix (a breaking change in a version, a
    version skipped or lowered), and the files it would write."""
    breaks, stale = [], []
    files = released(root)
    for name, (version, schema) in current().items():
        have = files.get(name, {})
        newer = [v for v in have if v > version]
        if newer:
            breaks.append(f"{name}: v{max(newer)} was released, yet VERSIONS says v{version} (never lower a version)")
        if version > 1 and version - 1 not in have:
            breaks.append(f"{name}: v{version} would skip v{version - 1}, which was never released (raise by one)")
        file = path_of(name, version, root)
        if not file.exists():
            stale.append(f"{name}: v{version} is not written yet")
            continue
        text = file.read_text()
        for reason in breaking_changes(json.loads(text), schema):
            breaks.append(
                f"{name}: not backward compatible with its released v{version} (raise VERSIONS[{name}] "
                f"to {version + 1}): {reason}"
            )
        if text != render(schema) and not any(b.startswith(f"{name}:") for b in breaks):
            stale.append(f"{name}: v{version} differs from the model")
    return breaks, stale


def write(root: Path = SCHEMA_DIR) -> list[Path]:
    """Write each current version's file where it is missing or stale (a compatible change).
    Raises ValueError, writing nothing, if a change breaks its version."""
    breaks, _ = problems(root)
    if breaks:
        raise ValueError("\n".join(breaks))
    written = []
    for name, (version, schema) in current().items():
        file = path_of(name, version, root)
        if not file.exists() or file.read_text() != render(schema):
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(render(schema))
            written.append(file)
    return written
