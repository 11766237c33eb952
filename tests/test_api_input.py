"""Bad bytes never get a 5xx: raw request bodies against the real API and broker.

Every body is sent as bytes with explicit headers (never httpx's `json=`, which could only
send what Python's encoder writes), to both ingestion endpoints. A rejected body gets its
4xx with a `detail` saying why, the answer is strict JSON (no NaN), and neither topic
receives a record.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Callable

import httpx
import pytest

from conftest import end_offsets, read_from
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE

pytestmark = pytest.mark.services

ENDPOINTS = {"SendEvent": "PUT", "PurchasedItems": "POST"}
JSON = {"Content-Type": "application/json"}
SENTINEL = 987654.321  # a number no example has, replaced by the raw text of the case


def valid(endpoint: str) -> dict | list:
    """A body the endpoint accepts, for a user of its own (a copy: the cases change it)."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    if endpoint == "SendEvent":
        return {**copy.deepcopy(USER_EVENT_EXAMPLE), "UserId": user}
    return [{**copy.deepcopy(PURCHASE_EXAMPLE), "UserId": user, "OrderId": f"o-{user}"}]


def encoded(body: dict | list) -> bytes:
    return json.dumps(body).encode()


def _patched(endpoint: str, field: str, placeholder, raw: bytes) -> bytes:
    body = valid(endpoint)
    if endpoint == "SendEvent":
        target = body["Attributes"]
    else:
        target = body[0]["Products"][0] if field == "ProductId" else body[0]
    assert field in target
    target[field] = placeholder
    text, marker = encoded(body), encoded(placeholder)
    assert text.count(marker) == 1
    return text.replace(marker, raw)


def with_money(raw: bytes) -> Callable[[str], bytes]:
    """The body with this raw text as its (first) amount of money."""
    return lambda endpoint: _patched(endpoint, "Price" if endpoint == "SendEvent" else "TotalPrice", SENTINEL, raw)


def with_product_id(raw: bytes) -> Callable[[str], bytes]:
    """The body with this raw text in place of a ProductId's value (quotes included)."""
    return lambda endpoint: _patched(endpoint, "ProductId", "sentinel-product", raw)


def with_string(raw: bytes) -> Callable[[str], bytes]:
    """The body with these raw bytes inside a string value."""
    return with_product_id(b'"sku-' + raw + b'"')


def with_duplicate(nested: bool) -> Callable[[str], bytes]:
    """The body with a key given twice, at the top or in a nested object."""

    def make(endpoint: str) -> bytes:
        text = encoded(valid(endpoint))
        key = b'"ProductId": ' if nested else b'"UserId": '
        return text.replace(key, key + b'"someone-else", ' + key, 1)

    return make


def constant(raw: bytes) -> Callable[[str], bytes]:
    return lambda endpoint: raw


MAX_DEPTH = 32  # settings.api.max_json_depth's default, which the session's settings keep

# id -> (body for an endpoint, words the 400's detail has)
MALFORMED = {
    "NaN": (with_money(b"NaN"), "NaN"),
    "Infinity": (with_money(b"Infinity"), "Infinity"),
    "-Infinity": (with_money(b"-Infinity"), "Infinity"),
    "1e400": (with_money(b"1e400"), "64-bit float"),
    "-1e400": (with_money(b"-1e400"), "64-bit float"),
    "400-digit integer": (with_money(b"9" * 400), "64-bit float"),
    "5000-digit integer": (with_money(b"9" * 5000), "out of range"),
    "100000 nested arrays": (constant(b"[" * 100_000), f"deeper than {MAX_DEPTH}"),
    "100000 nested objects": (constant(b'{"a":' * 100_000), f"deeper than {MAX_DEPTH}"),
    "one level too deep": (constant(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)), f"deeper than {MAX_DEPTH}"),
    "too deep inside a field": (with_product_id(b"[" * 40 + b"]" * 40), f"deeper than {MAX_DEPTH}"),
    "invalid UTF-8 byte": (with_string(b"\xff"), "UTF-8"),
    "overlong UTF-8": (with_string(b"\xc0\xaf"), "UTF-8"),
    "UTF-8 encoded surrogate": (with_string(b"\xed\xa0\x80"), "UTF-8"),
    "truncated UTF-8 sequence": (with_string(b"\xe2\x82"), "UTF-8"),
    "UTF-16": (lambda endpoint: json.dumps(valid(endpoint)).encode("utf-16"), "UTF-8"),
    "lone surrogate escape": (with_string(rb"\udc00"), "surrogate"),
    "duplicate key": (with_duplicate(nested=False), 'duplicate key "UserId"'),
    "duplicate nested key": (with_duplicate(nested=True), 'duplicate key "ProductId"'),
    "trailing data": (lambda endpoint: encoded(valid(endpoint)) + b" {}", "trailing characters"),
    "truncated": (lambda endpoint: encoded(valid(endpoint))[:-1], "EOF"),
}

# bare JSON values: well-formed, but not what the contract takes
NOT_THE_CONTRACT = {
    "string": b'"x"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
    "depth at the limit": b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
}

NOT_JSON = {
    "text/plain": ("text/plain", None),
    "text/plain, not UTF-8": ("text/plain; charset=latin-1", b"\xff\xfe\x00"),
    "form": ("application/x-www-form-urlencoded", b"UserId=user-1&Price=1"),
    "multipart": (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="body"\r\n\r\n{}\r\n--xyz--\r\n',
    ),
    "xml": ("application/xml", b"<event/>"),
    "two slashes": ("application/x/+json", b"\xff"),  # FastAPI would not read it as JSON either
}

ACCEPTED = {
    "UTF-8 BOM": (lambda endpoint: b"\xef\xbb\xbf" + encoded(valid(endpoint)), JSON),
    "no Content-Type": (lambda endpoint: encoded(valid(endpoint)), {}),
    "charset=utf-8": (lambda endpoint: encoded(valid(endpoint)), {"Content-Type": "application/json; charset=utf-8"}),
    "+json": (lambda endpoint: encoded(valid(endpoint)), {"Content-Type": "application/vnd.shopstream+json"}),
    "upper case": (lambda endpoint: encoded(valid(endpoint)), {"Content-Type": "Application/JSON"}),
}


def strict_json(response: httpx.Response):
    """The answer's JSON, refusing what no JSON parser should have to take (NaN, Infinity)."""

    def refuse(name):
        raise AssertionError(f"{name} in the answer: {response.text[:200]}")

    return json.loads(response.content, parse_constant=refuse)


def send(api_server, endpoint: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.request(ENDPOINTS[endpoint], f"{api_server.url}/{endpoint}", content=body, headers=headers, timeout=30)


@pytest.fixture
def nothing_published(settings):
    """Asserts, after the test, that neither topic received a record during it."""
    before = {t: end_offsets(settings, t) for t in settings.kafka.topics}
    yield
    assert {t: end_offsets(settings, t) for t in settings.kafka.topics} == before


def test_the_session_keeps_the_default_depth(settings):
    assert settings.api.max_json_depth == MAX_DEPTH


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_json_gets_400_with_the_reason(api_server, nothing_published, endpoint, case):
    make, reason = MALFORMED[case]
    r = send(api_server, endpoint, make(endpoint), JSON)
    assert r.status_code == 400, r.text[:300]
    detail = strict_json(r)["detail"]
    assert isinstance(detail, str) and reason.lower() in detail.lower(), detail


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", NOT_THE_CONTRACT)
def test_well_formed_json_that_breaks_the_contract_gets_422(api_server, nothing_published, endpoint, case):
    r = send(api_server, endpoint, NOT_THE_CONTRACT[case], JSON)
    assert r.status_code == 422, r.text[:300]
    detail = strict_json(r)["detail"]
    assert detail and all(e["loc"][0] == "body" and e["msg"] for e in detail), detail


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", NOT_JSON)
def test_a_content_type_that_is_not_json_gets_415(api_server, nothing_published, endpoint, case):
    content_type, body = NOT_JSON[case]
    r = send(api_server, endpoint, encoded(valid(endpoint)) if body is None else body, {"Content-Type": content_type})
    assert r.status_code == 415, r.text[:300]
    detail = strict_json(r)["detail"]
    assert "application/json" in detail and content_type in detail, detail


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", ACCEPTED)
def test_json_without_content_type_or_with_a_bom_is_accepted(api_server, settings, endpoint, case):
    make, headers = ACCEPTED[case]
    topic = settings.kafka.user_events_topic if endpoint == "SendEvent" else settings.kafka.purchases_topic
    before = end_offsets(settings, topic)
    body = make(endpoint)
    r = send(api_server, endpoint, body, headers)
    if not headers:
        assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text[:300]
    sent = json.loads(body.removeprefix(b"\xef\xbb\xbf"))
    user = (sent if endpoint == "SendEvent" else sent[0])["UserId"]
    assert [m for m in read_from(settings, topic, before) if m.key == user.encode()]


def _rejected(api_server, reason: str) -> float:
    text = httpx.get(f"{api_server.url}/metrics").text
    found = re.search(rf'^shopstream_rejected_requests_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(found[1]) if found else 0.0


def test_rejections_are_counted(api_server):
    before = {reason: _rejected(api_server, reason) for reason in ("malformed_json", "unsupported_media_type")}
    send(api_server, "SendEvent", with_money(b"NaN")("SendEvent"), JSON)
    send(api_server, "PurchasedItems", b"[]", {"Content-Type": "text/plain"})
    assert _rejected(api_server, "malformed_json") == before["malformed_json"] + 1
    assert _rejected(api_server, "unsupported_media_type") == before["unsupported_media_type"] + 1
