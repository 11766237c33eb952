"""From a source's columns to the contract: which column is which field, and the record a row makes.

Pure (no I/O). A source row is a flat dict of column -> value (a CSV row's strings, a JSON
line's or a Parquet row's values); a mapping names the contract field each column fills,
by a dotted path (`Attributes.Price`). The automatic mapping ignores case, `_`, `-`, `.` and
spaces, and also takes a nested field by its own name where that name is unique
(`product_id` -> `Attributes.ProductId`). Besides the client fields, a row may carry the
envelope the API once wrote: `EventId` (kept as the record's id when valid), `ClientIp`
and `UserAgent` (sent on as the sender, see `sender.py`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from shopstream.contracts import EventId, Purchase, UserEvent, why_invalid
from shopstream.contracts.records import ADDED


class Kind(str, Enum):
    events = "events"
    purchases = "purchases"


MODELS: dict[Kind, type[BaseModel]] = {Kind.events: UserEvent, Kind.purchases: Purchase}
ENVELOPE = ("EventId", "ClientIp", "UserAgent")  # what a row may carry besides the client fields
_EVENT_ID = TypeAdapter(EventId)


def contract_fields(model: type[BaseModel]) -> dict[str, str]:
    """Dotted path -> JSON type of every field of a client model, nested objects and their leaves."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    out: dict[str, str] = {}

    def walk(props: dict[str, Any], prefix: str) -> None:
        for name, prop in props.items():
            path = prefix + name
            if "$ref" in prop:
                target = defs[prop["$ref"].rsplit("/", 1)[1]]
                if "properties" in target:
                    out[path] = "object"
                    walk(target["properties"], path + ".")
                    continue
                prop = target
            out[path] = prop.get("type", "string")

    walk(schema["properties"], "")
    return out


FIELDS: dict[Kind, dict[str, str]] = {kind: contract_fields(model) for kind, model in MODELS.items()}


def norm(name: str) -> str:
    return re.sub(r"[\s_.\-]", "", name).lower()


def auto_mapping(columns: list[str], kind: Kind, explicit: dict[str, str] | None = None) -> dict[str, str]:
    """Column -> target path (a contract field or an envelope field) for the columns that have one."""
    targets = [*FIELDS[kind], *ENVELOPE]
    by_norm = {norm(t): t for t in targets}
    leaves: dict[str, list[str]] = {}
    for t in targets:
        leaves.setdefault(norm(t.rsplit(".", 1)[-1]), []).append(t)
    mapping: dict[str, str] = {}
    for col in columns:
        n = norm(col)
        if n in by_norm:
            mapping[col] = by_norm[n]
        elif len(leaves.get(n, [])) == 1:
            mapping[col] = leaves[n][0]
    for col, target in (explicit or {}).items():
        if target not in targets:
            raise ValueError(f"--map {col}={target}: {kind.value} have no field {target} (one of {', '.join(targets)})")
        mapping[col] = target
    return mapping


def detect_kind(columns: list[str], explicit: dict[str, str] | None = None) -> Kind:
    """The kind whose fields the columns fill more of (a tie is an error: say --kind)."""
    filled = {}
    for kind in Kind:
        try:
            mapping = auto_mapping(columns, kind, explicit)
        except ValueError:
            filled[kind] = -1
            continue
        filled[kind] = len({t for t in mapping.values() if t in FIELDS[kind]} - {"UserId", "SessionId", "TimeStamp"})
    best = max(filled.values())
    winners = [k for k, n in filled.items() if n == best]
    if best <= 0 or len(winners) > 1:
        raise ValueError(f"cannot tell events from purchases by the columns {columns}: say --kind")
    return winners[0]


def jsonable(value: Any) -> Any:
    """A typed value (Parquet's, BSON's) as JSON would carry it: what the API would be sent."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def from_text(text: str, json_type: str) -> Any:
    """A CSV cell as the JSON value the field takes; left as text where it is none (the contract says why)."""
    if json_type in ("number", "integer", "array", "object", "boolean"):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


@dataclass(frozen=True)
class Row:
    """A source record made ready: its client fields (JSON values) and what its envelope said."""

    body: dict[str, Any]
    event_id: str | None  # the row's own EventId, when it had a valid one
    client_ip: str | None = None
    user_agent: str | None = None


def make_row(values: dict[str, Any], mapping: dict[str, str], kind: Kind, text: bool) -> Row:
    """The client record a source row makes (`text`: the values are CSV strings, empty = missing)."""
    fields = FIELDS[kind]
    body: dict[str, Any] = {}
    envelope: dict[str, Any] = {}
    for col, target in sorted(mapping.items(), key=lambda m: m[1].count(".")):  # objects before their leaves
        value = values.get(col)
        if value is None or (text and value == ""):
            continue
        if target in ENVELOPE:
            envelope[target] = str(value)
            continue
        value = from_text(value, fields[target]) if text and isinstance(value, str) else jsonable(value)
        *parents, leaf = target.split(".")
        node = body
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[leaf] = value
    return Row(body, valid_event_id(envelope.get("EventId")), envelope.get("ClientIp"), envelope.get("UserAgent"))


def valid_event_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return _EVENT_ID.validate_python(value)
    except ValidationError:
        return None


def check(kind: Kind, body: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the record as it is sent: the validated model's JSON, None) or (None, why it is rejected):
    the same contract and the same reasons as the drain's dead letters."""
    try:
        model = MODELS[kind].model_validate(body)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with one record is that record's reason
        return None, why_invalid(e)
    return model.model_dump(mode="json"), None


def file_digest(path: Path) -> str:
    """The first 12 hex digits of the SHA-256 of a file's bytes: its part of the derived EventIds."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def safe_id(prefix: str, text: str) -> str:
    """An EventId made of `prefix` and a store's key (characters an EventId cannot have become `_`)."""
    return (prefix + re.sub(r"[^A-Za-z0-9_.:@-]", "_", text))[:128]


def from_record(value: bytes | None) -> tuple[Row | None, str | None]:
    """A record as Kafka carried it (a dead letter's or a quarantined record's raw value):
    its client fields and its envelope, or why it is no JSON object. The envelope is the
    API's to write: it is not validated here, and a replay gets a new one."""
    try:
        record = json.loads(value or b"")
    except ValueError as e:
        return None, f"invalid JSON: {e}"
    if not isinstance(record, dict):
        return None, f"invalid JSON: a record must be an object, not {type(record).__name__}"
    body = {k: v for k, v in record.items() if k not in ADDED}
    ip, agent = record.get("ClientIp"), record.get("UserAgent")
    return Row(
        body,
        valid_event_id(record.get("EventId")),
        ip if isinstance(ip, str) else None,
        agent if isinstance(agent, str) else None,
    ), None
