"""Is a new JSON Schema backward compatible with an old one? A conservative proof.

Compatible means: every instance the old schema accepts, the new one accepts too (a
consumer built on the new model still reads every record already in the topics), and no
field the old schema declares is gone (a removed or renamed field loses data even where
the new schema would still let it through). `breaking_changes(old, new)` returns why not,
one line per reason; empty means proven compatible.

It covers the JSON Schema that Pydantic writes: local `$ref`s into `$defs`, objects
(`properties`, `required`, `additionalProperties`), `type` (one or a list), `anyOf`
(nullable fields among them), `allOf`, `enum`/`const`, strings (`minLength`, `maxLength`,
`pattern`, `format`), numbers (`minimum`, `maximum`, exclusive bounds, `multipleOf`) and
arrays (`items`, `minItems`, `maxItems`, `uniqueItems`). Annotations (`title`,
`description`, `default`, `examples`...) never matter. Whatever it cannot prove, a keyword
it does not know on the new side say, or a pattern that changed, it calls breaking: a
false alarm costs a version number, a missed break costs the records in the topics.

Written here rather than taken from PyPI: the packages that check this (jsoncompat,
jsonsubschema) call themselves alpha or research code that can miss a break, and neither
counts a removed field as breaking when the schema would still admit it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

Schema = dict[str, Any] | bool

ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$schema",
        "$id",
        "discriminator",  # OpenAPI's hint; the anyOf/oneOf beside it decides
    }
)
TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
# the keywords understood, by the type they constrain
KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "array": {"items", "minItems", "maxItems", "uniqueItems"},
    "object": {"properties", "required", "additionalProperties"},
    "null": set(),
    "boolean": set(),
}
TYPED = set().union(*KEYWORDS.values())
STRUCTURAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs", "definitions"}
# keywords that only ever narrow what a schema accepts: on the old side they may be ignored
# (the proof then covers more than the old schema accepted). Any other unknown keyword
# there, such as `patternProperties` (which lets through keys `additionalProperties`
# refuses) or `prefixItems` (which takes the first items from `items`), stops the proof.
NARROWING = {"not", "if", "then", "else", "dependentRequired", "minProperties", "maxProperties", "propertyNames"}
NARROWING |= {"contains", "minContains", "maxContains"}


def breaking_changes(old: Schema, new: Schema) -> list[str]:
    """Why `new` is not backward compatible with `old`: one reason per line, [] if it is."""
    return _Proof(old, new).subset(old, new, "")


@dataclass
class _Proof:
    old_root: Schema
    new_root: Schema
    assumed: set[tuple[int, int]] = field(default_factory=set)  # (old, new) pairs being proven

    def _resolve(self, schema: Schema, root: Schema) -> tuple[Schema, str | None]:
        seen: list[str] = []
        while isinstance(schema, dict) and "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/") or ref in seen:
                raise _Unsupported(f"$ref {ref!r}")
            seen.append(ref)
            target: Any = root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, dict) or part not in target:
                    raise _Unsupported(f"$ref {ref!r} points nowhere")
                target = target[part]
            extra = {k for k in schema if k != "$ref" and k not in ANNOTATIONS}
            if extra:  # a $ref beside other keywords (older Pydantic): both apply
                schema = {"allOf": [target, {k: schema[k] for k in extra}]}
                break
            schema = target
        return schema, (seen[0] if seen else None)

    def subset(self, old: Schema, new: Schema, path: str) -> list[str]:
        """Reasons some instance of `old` is not an instance of `new` ([] = none: proven)."""
        try:
            old, _ = self._resolve(old, self.old_root)
            new, _ = self._resolve(new, self.new_root)
        except _Unsupported as e:
            return [f"{_at(path)}: cannot compare {e}"]
        pair = (id(old), id(new))  # the same two sub-schemas again, further down: a $ref cycle
        if pair in self.assumed:
            return []  # being proven further up: assume it (coinduction, as for recursive types)
        self.assumed.add(pair)
        try:
            return self._subset(old, new, path)
        finally:
            self.assumed.discard(pair)

    def _subset(self, old: Schema, new: Schema, path: str) -> list[str]:
        if (answer := _trivial(old, new, path)) is not None:
            return answer
        old = {} if old is True else old
        assert isinstance(old, dict) and isinstance(new, dict)
        # the new side first: what it requires of every instance
        if "allOf" in new:
            rest = {k: v for k, v in new.items() if k != "allOf"}
            return [r for part in [*new["allOf"], rest] for r in self.subset(old, part, path)]
        if "oneOf" in new or "not" in new or "if" in new:
            stops = [k for k in ("oneOf", "not", "if") if k in new]
            return [f"{_at(path)}: cannot prove the new schema's {stops} accepts it"]
        # then the old side: every instance of one of its parts is one of old's instances
        if "allOf" in old:
            rest = {k: v for k, v in old.items() if k != "allOf"}
            parts = [*old["allOf"], rest]
            attempts = [self.subset(part, new, path) for part in parts]
            return [] if any(not a for a in attempts) else attempts[0]
        if "enum" in old or "const" in old:
            values = old["enum"] if "enum" in old else [old["const"]]
            return [
                f"{_at(path)}: the value {json.dumps(v)} is no longer accepted"
                for v in values
                if not self.admits(new, v, self.new_root)
            ]
        old_branches, new_branches = self.branches(old, self.old_root), self.branches(new, self.new_root)
        if isinstance(old_branches, str):
            return [f"{_at(path)}: cannot compare the old schema's {old_branches}"]
        if isinstance(new_branches, str):
            return [f"{_at(path)}: cannot prove the new schema's {new_branches} accepts it"]
        reasons: list[str] = []
        for branch in old_branches:
            reasons += self._branch_in_any(branch, new_branches, path)
        return reasons

    def branches(
        self, schema: dict[str, Any], root: Schema, within: frozenset[str] = frozenset()
    ) -> list[Schema] | str:
        """The schema as a union of simpler ones, each of at most one type (or its enum/const),
        or the name of what stops that (a string). A part that is a `$ref` to such a schema
        stays a `$ref`, so comparing it goes through `subset`, which stops at recursion."""
        out: list[Schema] = []
        unions = [k for k in ("anyOf", "oneOf") if k in schema]
        if unions:  # an instance is one of the union's parts that also meets the rest
            rest = {k: v for k, v in schema.items() if k not in unions and k not in ANNOTATIONS}
            if len(unions) > 1 or any(k not in ("$defs", "definitions") for k in rest):
                return f"{'/'.join(unions)} beside {sorted(rest)}"
            for raw in schema[unions[0]]:
                try:
                    part, ref = self._resolve(raw, root)
                except _Unsupported as e:
                    return str(e)
                if ref in within:
                    return f"union {ref} that contains itself"
                if isinstance(part, bool) or "allOf" in part or "enum" in part or "const" in part:
                    out.append(raw)
                    continue
                more = self.branches(part, root, within | {ref} if ref else within)
                if isinstance(more, str):
                    return more
                out += [raw] if more == [part] else more
            return out
        if "enum" in schema or "const" in schema or "allOf" in schema:
            return [schema]
        types = schema.get("type")
        if types is None:
            typed = [k for k in schema if k in TYPED]
            if typed:  # constraints without a type: each applies to its own types only
                return f"{typed} without a type"
            return [schema]
        if isinstance(types, str):
            return [schema]
        return [{**schema, "type": t} for t in types]

    def _pair(self, old: Schema, new: Schema, path: str) -> list[str]:
        """One part of the old union against one of the new: through `subset` if either is a `$ref`."""
        if any(isinstance(s, dict) and "$ref" in s for s in (old, new)):
            return self.subset(old, new, path)
        return self._subset_simple(old, new, path)

    def _branch_in_any(self, old_part: Schema, news: list[Schema], path: str) -> list[str]:
        old, _ = self._resolve(old_part, self.old_root)  # resolved once already by `branches`
        if old is False:
            return []
        if isinstance(old, dict) and ("allOf" in old or "enum" in old or "const" in old):
            if len(news) == 1:
                return self.subset(old_part, news[0], path)
            # an enum's values may each be in another branch of the new union
            if "allOf" not in old:
                values = old["enum"] if "enum" in old else [old["const"]]
                union = {"anyOf": news}
                return [
                    f"{_at(path)}: the value {json.dumps(v)} is no longer accepted"
                    for v in values
                    if not self.admits(union, v, self.new_root)
                ]
        attempts = [self._pair(old_part, new, path) for new in news]
        if any(not a for a in attempts):
            return []
        if len(attempts) == 1:
            return attempts[0]
        old_type = old.get("type") if isinstance(old, dict) else None
        new_types = [_type_of(self._resolve(n, self.new_root)[0]) for n in news]
        same_type = [a for a, t in zip(attempts, new_types, strict=True) if t in (old_type, None)]
        if len(same_type) == 1:
            return same_type[0]
        return [f"{_at(path)}: {old_type or 'a value'} is no longer accepted (no part of the new schema takes it)"]

    def _subset_simple(self, old: Schema, new: Schema, path: str) -> list[str]:
        """`old` and `new` are each of at most one type, with no union left at the top."""
        if (answer := _trivial(old, new, path)) is not None:
            return answer
        old = {} if old is True else old
        assert isinstance(old, dict) and isinstance(new, dict)
        if "allOf" in old or "enum" in old or "const" in old or "enum" in new or "const" in new or "allOf" in new:
            return self._subset(old, new, path)
        unknown = _unknown_keys(new)
        if unknown:
            return [f"{_at(path)}: cannot prove the new schema's {unknown} accepts it"]
        widening = [k for k in _unknown_keys(old) if k not in NARROWING]
        if widening:
            return [f"{_at(path)}: cannot compare the old schema's {widening}"]
        old_type, new_type = old.get("type"), new.get("type")
        if new_type is None:  # no type and (from branches) no typed keyword: anything
            return []
        if old_type is None:
            return [f"{_at(path)}: any value was accepted, now only {new_type}"]
        if old_type != new_type and not (old_type == "integer" and new_type == "number"):
            change = "null is no longer accepted" if old_type == "null" else f"type {old_type} became {new_type}"
            return [f"{_at(path)}: {change}"]
        if new_type == "string":
            return _strings(old, new, path)
        if new_type in ("integer", "number"):
            return _numbers(old, new, path)
        if new_type == "array":
            return self._arrays(old, new, path)
        if new_type == "object":
            return self._objects(old, new, path)
        return []

    def _arrays(self, old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
        reasons = _bounds(old, new, path, "minItems", "maxItems", "items")
        if new.get("uniqueItems") and not old.get("uniqueItems"):
            reasons.append(f"{_at(path)}: items must now be unique")
        if isinstance(old.get("items"), list) or isinstance(new.get("items"), list):
            return [*reasons, f"{_at(path)}: cannot compare items given as a list"]
        if old.get("maxItems") != 0:
            reasons += self.subset(old.get("items", True), new.get("items", True), f"{path}/items")
        return reasons

    def _objects(self, old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
        old_props: dict[str, Schema] = old.get("properties", {})
        new_props: dict[str, Schema] = new.get("properties", {})
        old_extra: Schema = old.get("additionalProperties", True)
        new_extra: Schema = new.get("additionalProperties", True)
        reasons = [f"{_at(path)}: field {name} was removed (or renamed)" for name in old_props if name not in new_props]
        for name in new.get("required", []):
            if name not in old.get("required", []):
                was = "optional" if name in old_props else "new"
                reasons.append(f"{_at(path)}: field {name} is required now ({was} before)")
        for name, schema in new_props.items():
            where = f"{path}/{name}"
            if name in old_props:
                reasons += self.subset(old_props[name], schema, where)
            elif old_extra is not False:  # an old record may carry this name as an extra field
                reasons += [
                    f"{r} (the new field {name} meets the old extra fields)"
                    for r in self.subset(old_extra, schema, where)
                ]
        if old_extra is not False:
            reasons += self.subset(old_extra, new_extra, f"{path}/*")
        return reasons

    def admits(self, schema: Schema, value: Any, root: Schema) -> bool:
        """Does `schema` accept `value`? Only for the subset above; False when it cannot tell."""
        try:
            schema, _ = self._resolve(schema, root)
        except _Unsupported:
            return False
        if isinstance(schema, bool):
            return schema
        if _unknown_keys(schema):
            return False
        if "enum" in schema and not any(_same(value, v) for v in schema["enum"]):
            return False
        if "const" in schema and not _same(value, schema["const"]):
            return False
        if "anyOf" in schema and not any(self.admits(s, value, root) for s in schema["anyOf"]):
            return False
        if "oneOf" in schema and sum(self.admits(s, value, root) for s in schema["oneOf"]) != 1:
            return False
        if "allOf" in schema and not all(self.admits(s, value, root) for s in schema["allOf"]):
            return False
        kind = _kind(value)
        types = schema.get("type")
        if types is not None:
            allowed = [types] if isinstance(types, str) else types
            if kind not in allowed and not (kind == "integer" and "number" in allowed):
                return False
        if kind == "string":
            if "format" in schema:
                return False  # not checked here: cannot tell
            if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
                return False
            return "pattern" not in schema or re.search(schema["pattern"], value) is not None
        if kind in ("integer", "number"):
            return _in_bounds(value, schema)
        if kind in ("array", "object"):
            return not (set(schema) & TYPED)  # a constrained container value: cannot tell
        return True


class _Unsupported(Exception):
    pass


def _trivial(old: Schema, new: Schema, path: str) -> list[str] | None:
    """The answer when the old side accepts nothing or either side everything or nothing; else None."""
    if old is False or new is True or new == {}:
        return []
    if new is False:
        return [f"{_at(path)}: the new schema accepts nothing"]
    return None


def _at(path: str) -> str:
    return path or "/"


def _unknown_keys(schema: dict[str, Any]) -> list[str]:
    return sorted(k for k in schema if k not in ANNOTATIONS and k not in STRUCTURAL and k not in TYPED)


def _type_of(schema: Schema) -> str | None:
    if not isinstance(schema, dict):
        return None
    t = schema.get("type")
    return t if isinstance(t, str) else None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _strings(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    reasons = _bounds(old, new, path, "minLength", "maxLength", "length")
    if "pattern" in new and new["pattern"] != old.get("pattern"):
        reasons.append(f"{_at(path)}: pattern {old.get('pattern')!r} became {new['pattern']!r}")
    if "format" in new and new["format"] != old.get("format"):
        was = f"format {old['format']!r} became" if "format" in old else "a format is required now:"
        reasons.append(f"{_at(path)}: {was} {new['format']!r}")
    return reasons


def _bounds(old: dict[str, Any], new: dict[str, Any], path: str, low: str, high: str, what: str) -> list[str]:
    reasons = []
    if new.get(low, 0) > old.get(low, 0):
        reasons.append(f"{_at(path)}: {low} raised from {old.get(low, 0)} to {new[low]} ({what})")
    if new.get(high, math.inf) < old.get(high, math.inf):
        reasons.append(f"{_at(path)}: {high} lowered from {old.get(high, 'none')} to {new[high]} ({what})")
    return reasons


def _lower(schema: dict[str, Any]) -> tuple[float, bool]:
    """The lowest bound as (value, exclusive); (-inf, False) for none."""
    bounds = [(-math.inf, False)]
    if "minimum" in schema:
        bounds.append((schema["minimum"], False))
    if "exclusiveMinimum" in schema:
        bounds.append((schema["exclusiveMinimum"], True))
    return max(bounds)  # the tighter: higher, and exclusive at the same value


def _upper(schema: dict[str, Any]) -> tuple[float, bool]:
    bounds = [(math.inf, False)]
    if "maximum" in schema:
        bounds.append((schema["maximum"], False))
    if "exclusiveMaximum" in schema:
        bounds.append((schema["exclusiveMaximum"], True))
    return min(bounds, key=lambda b: (b[0], not b[1]))


def _numbers(old: dict[str, Any], new: dict[str, Any], path: str) -> list[str]:
    reasons = []
    (old_low, old_low_ex), (new_low, new_low_ex) = _lower(old), _lower(new)
    if new_low > old_low or (new_low == old_low and new_low_ex and not old_low_ex):
        reasons.append(
            f"{_at(path)}: the lower bound rose from {_bound(old_low, old_low_ex)} to {_bound(new_low, new_low_ex)}"
        )
    (old_high, old_high_ex), (new_high, new_high_ex) = _upper(old), _upper(new)
    if new_high < old_high or (new_high == old_high and new_high_ex and not old_high_ex):
        reasons.append(
            f"{_at(path)}: the upper bound fell from {_bound(old_high, old_high_ex)} to {_bound(new_high, new_high_ex)}"
        )
    if "multipleOf" in new:
        step = old.get("multipleOf", 1 if old.get("type") == "integer" else None)
        if step is None or Decimal(str(step)) % Decimal(str(new["multipleOf"])) != 0:
            reasons.append(f"{_at(path)}: must now be a multiple of {new['multipleOf']}")
    return reasons


def _bound(value: float, exclusive: bool) -> str:
    return "none" if math.isinf(value) else f"{value}{' (exclusive)' if exclusive else ''}"


def _in_bounds(value: float, schema: dict[str, Any]) -> bool:
    low, low_ex = _lower(schema)
    high, high_ex = _upper(schema)
    if value < low or (low_ex and value == low) or value > high or (high_ex and value == high):
        return False
    step = schema.get("multipleOf")
    return step is None or Decimal(str(value)) % Decimal(str(step)) == 0
