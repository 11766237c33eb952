"""MongoDB `$jsonSchema` validators derived from the contracts' JSON Schema.

MongoDB's dialect differs from JSON Schema: no `$ref`, `bsonType` instead of
`type`, dates as BSON dates. This translates; it never restates a rule.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_NUMBER = ["decimal", "double", "int", "long"]
_KEEP = {
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "required",
    "description",
}


def _translate(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        return _translate(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        return {"anyOf": [_translate(n, defs) for n in node["anyOf"]]}
    out = {k: v for k, v in node.items() if k in _KEEP}
    kind = node.get("type")
    if kind == "string" and node.get("format") == "date-time":
        out = {"bsonType": "date"}
    elif kind == "number":
        out["bsonType"] = _NUMBER
    elif kind == "integer":
        out["bsonType"] = ["int", "long"]
    elif kind == "array":
        out["bsonType"] = "array"
        out["items"] = _translate(node["items"], defs)
    elif kind == "object":
        out["bsonType"] = "object"
        out["properties"] = {k: _translate(v, defs) for k, v in node.get("properties", {}).items()}
        out["additionalProperties"] = node.get("additionalProperties", True)
    elif kind is not None:
        out["bsonType"] = {"boolean": "bool", "null": "null"}.get(kind, kind)
    return out


def mongo_validator(
    model: type[BaseModel], *, rename: dict[str, str] | None = None, extra: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """`{"$jsonSchema": ...}` for documents shaped like `model`.

    `rename` maps contract fields to document fields (EventId -> _id); `extra` adds
    the fields the store itself writes (Kafka coordinates, bookkeeping).
    """
    schema = model.model_json_schema()
    root = _translate(schema, schema.get("$defs", {}))
    rename = rename or {}
    root["properties"] = {rename.get(k, k): v for k, v in root["properties"].items()} | (extra or {})
    root["required"] = [rename.get(k, k) for k in root.get("required", [])]
    return {"$jsonSchema": root}
