"""Versioned contracts: the committed JSON Schemas match the models, no version changes
incompatibly, the compatibility checker tells a break from a widening, and GET /schemas
serves the committed files."""

from __future__ import annotations

import copy
import json
import shutil
from typing import Any

import httpx
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, create_model

from conftest import invoke
from shopstream.contracts import CLIENT_MODELS, DIMENSION_MODELS, RECORD_MODELS, VERSIONS, UserEventRecord
from shopstream.contracts import versions as contract_versions
from shopstream.contracts.compat import breaking_changes
from shopstream.contracts.events import STRICT
from shopstream.contracts.versions import SCHEMA_DIR
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from strategies import purchases, user_events

PUBLISHED = (*CLIENT_MODELS, *RECORD_MODELS, *DIMENSION_MODELS)


def committed(name: str) -> dict[int, dict[str, Any]]:
    """The model's committed schema files, by version (read here, not through the module)."""
    folder = SCHEMA_DIR / name
    files = sorted(folder.glob("v*.json")) if folder.is_dir() else []
    return {int(f.stem[1:]): json.loads(f.read_text()) for f in files}


# -- the committed files ------------------------------------------------------------------


@pytest.mark.parametrize("model", PUBLISHED, ids=lambda m: m.__name__)
def test_the_current_versions_file_is_the_models_schema(model):
    files = committed(model.__name__)
    version = VERSIONS[model]
    assert version in files, f"{model.__name__} v{version} has no schema file: run `invoke schemas`"
    assert files[version] == model.model_json_schema(), (
        f"{model.__name__}'s model changed, its v{version}.json did not: run `invoke schemas` and commit the file"
    )


@pytest.mark.parametrize("model", PUBLISHED, ids=lambda m: m.__name__)
def test_a_model_changes_compatibly_within_its_version_or_the_version_was_raised(model):
    """Against the file of its current version (`invoke schemas` refuses to write a breaking
    change over it), with every earlier version still there."""
    name, version, files = model.__name__, VERSIONS[model], committed(model.__name__)
    assert set(files) <= set(range(1, version + 1)), f"{name}: a version above v{version} was released"
    assert set(range(1, version)) <= set(files), f"{name}: v{version} has no predecessor file (raise by one)"
    if version in files:
        reasons = breaking_changes(files[version], model.model_json_schema())
        assert not reasons, (
            f"{name} changed incompatibly with its released v{version}: raise its version in "
            f"shopstream.contracts.versions.VERSIONS to {version + 1} and run `invoke schemas`:\n" + "\n".join(reasons)
        )


def test_invoke_schemas_check_passes_on_the_committed_files(settings):
    out = invoke(settings, "schemas", "--check", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_published_contract_has_a_version_and_nothing_else_is_committed():
    assert set(VERSIONS) == set(PUBLISHED)
    assert {d.name for d in SCHEMA_DIR.iterdir() if d.is_dir()} == {m.__name__ for m in PUBLISHED}


# -- a real model broken by hand ------------------------------------------------------------


def without(model, field: str, **changed):
    """A copy of `model` under its own name, without one field and with others changed."""
    fields = {n: (f.annotation, f) for n, f in model.model_fields.items() if n != field}
    return create_model(model.__name__, __config__=STRICT, __doc__=model.__doc__, **{**fields, **changed})


@pytest.fixture
def schema_dir(tmp_path):
    """The committed files copied to a folder of the test's own."""
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, root)
    return root


def test_a_field_removed_from_a_real_model_fails_the_check_until_its_version_is_raised(schema_dir, monkeypatch):
    broken = without(UserEventRecord, "SessionId")
    v1 = committed("UserEventRecord")[1]
    assert any("SessionId was removed" in r for r in breaking_changes(v1, broken.model_json_schema()))

    published = {broken if m is UserEventRecord else m: v for m, v in VERSIONS.items()}
    monkeypatch.setattr(contract_versions, "VERSIONS", published)
    breaks, _ = contract_versions.problems(schema_dir)
    assert len(breaks) == 1 and breaks[0].startswith("UserEventRecord: not backward compatible")
    with pytest.raises(ValueError, match="raise VERSIONS\\[UserEventRecord\\] to 2"):
        contract_versions.write(schema_dir)
    assert json.loads((schema_dir / "UserEventRecord" / "v1.json").read_text()) == v1  # nothing written

    monkeypatch.setitem(published, broken, 2)
    assert contract_versions.write(schema_dir) == [schema_dir / "UserEventRecord" / "v2.json"]
    assert json.loads((schema_dir / "UserEventRecord" / "v1.json").read_text()) == v1  # kept
    assert json.loads((schema_dir / "UserEventRecord" / "v2.json").read_text()) == broken.model_json_schema()
    assert contract_versions.problems(schema_dir) == ([], [])

    monkeypatch.setitem(published, broken, 4)  # v3 never released
    assert any("skip v3" in b for b in contract_versions.problems(schema_dir)[0])
    monkeypatch.setitem(published, broken, 1)  # lowered again
    assert any("never lower" in b for b in contract_versions.problems(schema_dir)[0])


def test_a_new_optional_field_is_written_over_the_current_version(schema_dir, monkeypatch):
    grown = create_model(
        "UserEventRecord", __base__=UserEventRecord, Source=(str | None, None)
    )  # what a new envelope field looks like
    monkeypatch.setattr(
        contract_versions, "VERSIONS", {grown if m is UserEventRecord else m: v for m, v in VERSIONS.items()}
    )
    assert contract_versions.problems(schema_dir) == ([], ["UserEventRecord: v1 differs from the model"])
    assert contract_versions.write(schema_dir) == [schema_dir / "UserEventRecord" / "v1.json"]
    assert json.loads((schema_dir / "UserEventRecord" / "v1.json").read_text()) == grown.model_json_schema()
    assert contract_versions.problems(schema_dir) == ([], [])


# -- the checker on crafted pairs ---------------------------------------------------------------

BASE: dict[str, Any] = {
    "$defs": {"Kind": {"enum": ["a", "b"], "type": "string", "title": "Kind"}},
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "Name": {"type": "string", "minLength": 1, "maxLength": 10, "pattern": "^[a-z]+$"},
        "Kind": {"$ref": "#/$defs/Kind"},
        "Count": {"type": "integer", "minimum": 0, "maximum": 100},
        "Price": {"type": "number", "exclusiveMinimum": 0},
        "Note": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}], "default": None},
        "Tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "When": {"type": "string", "format": "date-time"},
    },
    "required": ["Name", "Kind", "Count"],
}


def changed(edit) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    edit(new)
    return new


def props(s: dict[str, Any]) -> dict[str, Any]:
    return s["properties"]


BREAKING = {
    "field removed": lambda s: props(s).pop("Count"),
    "field renamed": lambda s: (
        props(s).update(Title=props(s).pop("Name")),
        s.update(required=["Title", "Kind", "Count"]),
    ),
    "str became int": lambda s: props(s).update(Name={"type": "integer"}),
    "int became str": lambda s: props(s).update(Count={"type": "string"}),
    "number became integer": lambda s: props(s)["Price"].update(type="integer"),
    "maxLength lowered": lambda s: props(s)["Name"].update(maxLength=9),
    "minLength raised": lambda s: props(s)["Name"].update(minLength=2),
    "pattern changed": lambda s: props(s)["Name"].update(pattern="^[a-z]*$"),
    "format added": lambda s: props(s)["Name"].update(format="email"),
    "enum value removed": lambda s: s["$defs"]["Kind"].update(enum=["a"]),
    "maximum lowered": lambda s: props(s)["Count"].update(maximum=99),
    "minimum raised": lambda s: props(s)["Count"].update(minimum=1),
    "inclusive bound made exclusive": lambda s: (
        props(s)["Count"].pop("minimum"),
        props(s)["Count"].update(exclusiveMinimum=0),
    ),
    "new required field": lambda s: (props(s).update(Extra={"type": "string"}), s["required"].append("Extra")),
    "optional field made required": lambda s: s["required"].append("Price"),
    "nullable made not nullable": lambda s: props(s).update(Note={"type": "string", "maxLength": 5}),
    "nullable branch narrowed": lambda s: props(s)["Note"]["anyOf"][0].update(maxLength=4),
    "maxItems lowered": lambda s: props(s)["Tags"].update(maxItems=2),
    "items narrowed": lambda s: props(s)["Tags"]["items"].update(maxLength=3),
    "items unique now": lambda s: props(s)["Tags"].update(uniqueItems=True),
    "a multiple now": lambda s: props(s)["Price"].update(multipleOf=0.01),
    "an unknown keyword on the new side": lambda s: props(s)["Tags"].update(contains={"const": "x"}),
    "a oneOf on the new side": lambda s: props(s).update(Note={"oneOf": [{"type": "string"}, {"type": "null"}]}),
}

COMPATIBLE = {
    "unchanged": lambda s: None,
    "new optional field": lambda s: props(s).update(Source={"anyOf": [{"type": "string"}, {"type": "null"}]}),
    "maxLength widened": lambda s: props(s)["Name"].update(maxLength=11),
    "minLength lowered": lambda s: props(s)["Name"].pop("minLength"),
    "pattern dropped": lambda s: props(s)["Name"].pop("pattern"),
    "format dropped": lambda s: props(s)["When"].pop("format"),
    "enum value added": lambda s: s["$defs"]["Kind"].update(enum=["a", "b", "c"]),
    "enum inlined": lambda s: props(s).update(Kind={"type": "string", "enum": ["b", "a"]}),
    "enum to any string": lambda s: props(s).update(Kind={"type": "string"}),
    "integer became number": lambda s: props(s)["Count"].update(type="number"),
    "bounds widened": lambda s: props(s)["Count"].update(minimum=-1, maximum=1000),
    "exclusive bound made inclusive": lambda s: (
        props(s)["Price"].pop("exclusiveMinimum"),
        props(s)["Price"].update(minimum=0),
    ),
    "made nullable": lambda s: props(s).update(Name={"anyOf": [props(s)["Name"], {"type": "null"}]}),
    "required made optional": lambda s: s["required"].remove("Count"),
    "maxItems dropped": lambda s: props(s)["Tags"].pop("maxItems"),
    "items widened": lambda s: props(s)["Tags"].update(items={}),
    "extra fields allowed": lambda s: s.pop("additionalProperties"),
    "annotations changed": lambda s: (props(s)["Name"].update(title="The name", description="x"), s.update(title="T")),
    "a type list": lambda s: props(s).update(Note={"type": ["string", "null"]}),
}


@pytest.mark.parametrize("edit", BREAKING.values(), ids=BREAKING.keys())
def test_a_breaking_change_is_named(edit):
    assert breaking_changes(BASE, changed(edit))


@pytest.mark.parametrize("edit", COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_a_compatible_change_passes(edit):
    assert breaking_changes(BASE, changed(edit)) == []


def test_the_reasons_say_what_broke_and_where():
    new = changed(lambda s: (props(s).pop("Count"), props(s)["Name"].update(maxLength=9)))
    reasons = breaking_changes(BASE, new)
    assert any(r.startswith("/: field Count was removed") for r in reasons), reasons
    assert any(r.startswith("/Name: maxLength lowered from 10 to 9") for r in reasons), reasons


def test_a_new_field_meets_the_extra_fields_an_open_object_let_through():
    old = {"type": "object", "properties": {"A": {"type": "string"}}}  # any other field allowed
    assert breaking_changes(old, {**old, "properties": {"A": {"type": "string"}, "B": {"type": "integer"}}})
    assert breaking_changes(old, {**old, "additionalProperties": False})
    assert breaking_changes(old, {**old, "properties": {"A": {"type": "string"}, "B": {}}}) == []


def test_keywords_that_widen_the_old_schema_stop_the_proof():
    old = {"type": "object", "additionalProperties": False, "patternProperties": {"^x": {}}}
    assert breaking_changes(old, {"type": "object", "additionalProperties": False})


class Node(BaseModel):
    Name: str
    Next: Node | None = None  # a $ref inside a union
    Children: list[Node] = []  # a $ref as the items


def test_recursive_schemas_terminate():
    schema = Node.model_json_schema()
    assert breaking_changes(schema, schema) == []
    narrowed = copy.deepcopy(schema)
    narrowed["$defs"]["Node"]["properties"]["Name"]["maxLength"] = 3
    assert breaking_changes(schema, narrowed)
    not_null = copy.deepcopy(schema)
    not_null["$defs"]["Node"]["properties"]["Next"] = {"$ref": "#/$defs/Node"}
    assert breaking_changes(schema, not_null) == ["/Next: null is no longer accepted"]
    assert breaking_changes(not_null, schema) == []


@pytest.mark.parametrize("model", PUBLISHED, ids=lambda m: m.__name__)
def test_every_real_schema_is_compatible_with_itself(model):
    assert breaking_changes(model.model_json_schema(), model.model_json_schema()) == []


# -- properties: random widenings pass, any one narrowing fails ----------------------------------


def nodes(schema: Any) -> list[dict[str, Any]]:
    """Every sub-schema (dict) of a schema, the root first."""
    found: list[dict[str, Any]] = []

    def walk(s: Any) -> None:
        if not isinstance(s, dict):
            return
        found.append(s)
        for key in ("$defs", "properties"):
            for sub in s.get(key, {}).values():
                walk(sub)
        for sub in s.get("anyOf", []):
            walk(sub)
        walk(s.get("items"))

    walk(schema)
    return found


def widenings(node: dict[str, Any]) -> list:
    ops = []
    if "maxLength" in node:
        ops.append(lambda n, k: n.update(maxLength=n["maxLength"] + k))
    if node.get("minLength", 0) > 0:
        ops.append(lambda n, k: n.update(minLength=n["minLength"] - 1))
    if "maximum" in node:
        ops.append(lambda n, k: n.update(maximum=n["maximum"] + k))
    if "minimum" in node:
        ops.append(lambda n, k: n.update(minimum=n["minimum"] - k))
    if "maxItems" in node:
        ops.append(lambda n, k: n.update(maxItems=n["maxItems"] + k))
    if "enum" in node:
        ops.append(lambda n, k: n.update(enum=[*n["enum"], f"New{k}"]))
    if node.get("type") == "integer":
        ops.append(lambda n, k: n.update(type="number"))
    if "pattern" in node:
        ops.append(lambda n, k: n.pop("pattern"))
    if node.get("type") == "object":
        ops.append(
            lambda n, k: n["properties"].setdefault(f"Added{k}", {"anyOf": [{"type": "string"}, {"type": "null"}]})
        )
        if node.get("required"):
            ops.append(lambda n, k: n["required"].pop(k % len(n["required"])))
        for name, sub in node["properties"].items():
            if "anyOf" not in sub:
                ops.append(
                    lambda n, k, name=name: n["properties"].update(
                        {name: {"anyOf": [n["properties"][name], {"type": "null"}]}}
                    )
                )
    return ops


def narrowings(node: dict[str, Any]) -> list:
    ops = []
    if "maxLength" in node:
        ops.append(lambda n, k: n.update(maxLength=n["maxLength"] - 1))
    if ("minLength" in node or node.get("type") == "string") and "enum" not in node:  # an enum's values decide
        ops.append(lambda n, k: n.update(minLength=n.get("minLength", 0) + k))
    if "maximum" in node:
        ops.append(lambda n, k: n.update(maximum=n["maximum"] - k))
    if "minimum" in node:
        ops.append(lambda n, k: n.update(minimum=n["minimum"] + k))
    if "enum" in node:
        ops.append(lambda n, k: n["enum"].pop(k % len(n["enum"])))
    if node.get("type") == "number":
        ops.append(lambda n, k: n.update(type="integer"))
    if node.get("type") == "object":
        ops.append(lambda n, k: n["properties"].pop(list(n["properties"])[k % len(n["properties"])]))
        ops.append(
            lambda n, k: (
                n["properties"].update(Needed={"type": "string"}),
                n.setdefault("required", []).append("Needed"),
            )
        )
        optional = [p for p in node["properties"] if p not in node.get("required", [])]
        if optional:
            ops.append(lambda n, k: n.setdefault("required", []).append(optional[k % len(optional)]))
    if any(b == {"type": "null"} for b in node.get("anyOf", [])):
        ops.append(lambda n, k: n.update(anyOf=[b for b in n["anyOf"] if b != {"type": "null"}]))
    return ops


def apply(schema: dict[str, Any], pick, data) -> dict[str, Any]:
    """A copy of `schema` with one change, `pick`ed by the node's operations, at a drawn node and size."""
    new = copy.deepcopy(schema)
    candidates = [(node, op) for node in nodes(new) for op in pick(node)]
    node, op = data.draw(st.sampled_from(candidates))
    op(node, data.draw(st.integers(1, 1000)))
    return new


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PUBLISHED), st.data())
def test_any_series_of_widenings_is_compatible(model, data):
    old = model.model_json_schema()
    new = old
    for _ in range(data.draw(st.integers(1, 6))):
        new = apply(new, widenings, data)
    assert breaking_changes(old, new) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PUBLISHED), st.data())
def test_any_one_narrowing_is_breaking(model, data):
    old = model.model_json_schema()
    assert breaking_changes(old, apply(old, narrowings, data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(user_events().map(lambda r: ("UserEvent", r)), purchases().map(lambda r: ("Purchase", r))),
    st.data(),
)
def test_a_record_valid_under_the_old_schema_is_valid_under_a_widened_one(case, data):
    """What the checker calls compatible, a validator confirms on real records."""
    name, record = case
    old = committed(name)[1]
    new = old
    for _ in range(data.draw(st.integers(1, 6))):
        new = apply(new, widenings, data)
    assert breaking_changes(old, new) == []
    jsonschema.validate(record, old)
    jsonschema.validate(record, new)


# -- GET /schemas on the real API -----------------------------------------------------------------


@pytest.mark.services
def test_the_api_serves_every_committed_version(api_server):
    listing = httpx.get(f"{api_server.url}/schemas").json()
    expected = {m.__name__: VERSIONS[m] for m in PUBLISHED}
    assert {e["Model"]: e["Version"] for e in listing} == expected
    for entry in listing:
        files = committed(entry["Model"])
        assert entry["Versions"] == sorted(files)
        latest = httpx.get(f"{api_server.url}/schemas/{entry['Model']}")
        assert latest.status_code == 200 and latest.headers["Schema-Version"] == str(entry["Version"])
        assert latest.json() == files[entry["Version"]]
        for version, schema in files.items():
            assert httpx.get(f"{api_server.url}/schemas/{entry['Model']}/v{version}").json() == schema
    # what a client sends is valid under the served schema
    jsonschema.validate(USER_EVENT_EXAMPLE, httpx.get(f"{api_server.url}/schemas/UserEvent").json())
    jsonschema.validate(PURCHASE_EXAMPLE, httpx.get(f"{api_server.url}/schemas/Purchase/v1").json())


@pytest.mark.services
@pytest.mark.parametrize(
    "path", ["/schemas/Nope", "/schemas/Nope/v1", "/schemas/UserEvent/v0", "/schemas/UserEvent/v99"]
)
def test_an_unknown_contract_or_version_is_404(api_server, path):
    r = httpx.get(f"{api_server.url}{path}")
    assert r.status_code == 404, r.text
