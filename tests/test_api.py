"""The ingestion API against the real broker: acknowledged means readable, rejected means nothing sent."""

from __future__ import annotations

import json
import shutil
import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.generation import GenerationMode

from conftest import ServerThread, end_offsets, make_settings, read_from
from shopstream.adapters.api import api_health
from shopstream.contracts import Purchase, UserEvent
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from shopstream_api.main import create_app
from shopstream_stack.kafka import KafkaBroker

pytestmark = pytest.mark.services


def event(**over) -> dict:
    return {**USER_EVENT_EXAMPLE, "UserId": f"user-{uuid.uuid4().hex[:8]}", **over}


def test_examples_in_the_docs_are_valid():
    UserEvent.model_validate(USER_EVENT_EXAMPLE)
    Purchase.model_validate(PURCHASE_EXAMPLE)


def test_accepted_event_is_in_its_topic_keyed_by_user(api_server, settings):
    topic = settings.kafka.user_events_topic
    before = end_offsets(settings, topic)
    body = event()
    r = httpx.put(f"{api_server.url}/SendEvent", json=body)
    assert r.status_code == 200, r.text
    ack = r.json()
    (msg,) = [m for m in read_from(settings, topic, before) if m.key == body["UserId"].encode()]
    assert (msg.partition, msg.offset) == (ack["Partition"], ack["Offset"])
    published = json.loads(msg.value)
    assert published.pop("EventId") == ack["EventId"]
    assert published.pop("IngestedAt")
    # the envelope: the connection's peer (127.0.0.1), truncated to its /24, and the User-Agent sent
    assert published.pop("ClientIp") == "127.0.0.0"
    assert published.pop("UserAgent") == r.request.headers["user-agent"]
    assert published.pop("Source") is None  # sent without a write key (none required on loopback)
    assert UserEvent.model_validate(published) == UserEvent.model_validate(body)


def test_behind_a_trusted_proxy_the_record_names_the_forwarded_client_truncated(api_server, settings):
    """The test server trusts 127.0.0.1 as a proxy: the client is the last address in
    X-Forwarded-For that is not a trusted proxy, whatever the client itself put before it."""
    topic = settings.kafka.user_events_topic
    before = end_offsets(settings, topic)
    body = event()
    agent = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) Version/17.1 Mobile/15E148 Safari/604.1"
    headers = {"X-Forwarded-For": "6.6.6.6, 89.160.20.128, 127.0.0.1", "User-Agent": agent + "x" * 600}
    r = httpx.put(f"{api_server.url}/SendEvent", json=body, headers=headers)
    assert r.status_code == 200, r.text
    (msg,) = [m for m in read_from(settings, topic, before) if m.key == body["UserId"].encode()]
    published = json.loads(msg.value)
    assert published["ClientIp"] == "89.160.20.0"
    assert published["UserAgent"] == (agent + "x" * 600)[:512]  # cut to the contract's limit


def test_a_peer_that_is_no_trusted_proxy_cannot_name_another_address(stack, settings):
    topic = settings.kafka.user_events_topic
    before = end_offsets(settings, topic)
    body = event()
    with ServerThread(create_app(settings), forwarded_allow_ips=[]) as server:  # trusts no proxy
        r = httpx.put(f"{server.url}/SendEvent", json=body, headers={"X-Forwarded-For": "89.160.20.128"})
    assert r.status_code == 200, r.text
    (msg,) = [m for m in read_from(settings, topic, before) if m.key == body["UserId"].encode()]
    assert json.loads(msg.value)["ClientIp"] == "127.0.0.0"  # the peer, not the header


def test_purchases_are_published_with_idempotency_key_ids(api_server, settings):
    topic = settings.kafka.purchases_topic
    before = end_offsets(settings, topic)
    users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    body = [{**PURCHASE_EXAMPLE, "UserId": u, "OrderId": f"o-{u}"} for u in users]
    key = uuid.uuid4().hex
    r = httpx.post(f"{api_server.url}/PurchasedItems", json=body, headers={"Idempotency-Key": key})
    assert r.status_code == 200, r.text
    assert r.json() == {"Accepted": 5, "EventIds": [f"{key}:{i}" for i in range(5)]}
    got = {m.key.decode(): json.loads(m.value) for m in read_from(settings, topic, before)}
    for i, u in enumerate(users):
        assert got[u]["EventId"] == f"{key}:{i}" and got[u]["OrderId"] == f"o-{u}"
        assert got[u]["Products"] == PURCHASE_EXAMPLE["Products"]


def test_purchases_take_their_own_event_ids_from_the_event_ids_header(api_server, settings):
    """`Event-Ids` (what `invoke replay` sends): each purchase gets the id named for it, in order."""
    topic = settings.kafka.purchases_topic
    before = end_offsets(settings, topic)
    users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    body = [{**PURCHASE_EXAMPLE, "UserId": u} for u in users]
    ids = [f"rp-{uuid.uuid4().hex[:12]}-{n}" for n in (2, 3, 7)]
    r = httpx.post(f"{api_server.url}/PurchasedItems", json=body, headers={"Event-Ids": " , ".join(ids)})
    assert r.status_code == 200, r.text
    assert r.json() == {"Accepted": 3, "EventIds": ids}
    got = {m.key.decode(): json.loads(m.value)["EventId"] for m in read_from(settings, topic, before)}
    assert [got[u] for u in users] == ids


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Event-Ids": "a1,b2"}, "names 2 EventIds for 3 purchases"),
        ({"Event-Ids": "a1,b2,c3,d4"}, "names 4 EventIds for 3 purchases"),
        ({"Event-Ids": "a1,a1,c3"}, "an EventId twice"),
        ({"Event-Ids": "a1,b2,c3", "Idempotency-Key": "k1"}, "not both"),
        ({"Event-Ids": "a1,-b2,c3"}, "pattern"),
        ({"Event-Ids": "a1,,c3"}, "pattern"),
        ({"Event-Ids": "a1,b2," + "c" * 129}, "pattern"),
    ],
    ids=["too-few", "too-many", "twice", "with-key", "bad-id", "empty-id", "long-id"],
)
def test_event_ids_that_do_not_fit_the_purchases_get_422_and_publish_nothing(api_server, settings, headers, why):
    before = end_offsets(settings, settings.kafka.purchases_topic)
    r = httpx.post(f"{api_server.url}/PurchasedItems", json=[PURCHASE_EXAMPLE] * 3, headers=headers)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == ["header", "Event-Ids"] and why in error["msg"], error
    assert end_offsets(settings, settings.kafka.purchases_topic) == before


def test_records_sent_without_a_key_get_distinct_random_uuids_as_published(api_server, settings):
    topic = settings.kafka.purchases_topic
    before = end_offsets(settings, topic)
    users = [f"user-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    r = httpx.post(f"{api_server.url}/PurchasedItems", json=[{**PURCHASE_EXAMPLE, "UserId": u} for u in users])
    assert r.status_code == 200, r.text
    ids = r.json()["EventIds"]
    single = httpx.put(f"{api_server.url}/SendEvent", json=event()).json()["EventId"]
    assert len(set([*ids, single])) == 21
    for given_id in [*ids, single]:
        parsed = uuid.UUID(given_id)
        assert (str(parsed), parsed.version, parsed.variant) == (given_id, 4, uuid.RFC_4122)
    got = {m.key.decode(): json.loads(m.value)["EventId"] for m in read_from(settings, topic, before)}
    assert [got[u] for u in users] == ids


@pytest.mark.parametrize(
    ("method", "path", "body", "where"),
    [
        ("PUT", "/SendEvent", event(EventName="Bought"), ["body", "EventName"]),
        (
            "PUT",
            "/SendEvent",
            event(Attributes={"ProductId": "p", "Price": 1, "Discount": 2}),
            ["body", "Attributes", "Discount"],
        ),
        ("PUT", "/SendEvent", [event()], ["body"]),
        ("POST", "/PurchasedItems", [], ["body"]),
        ("POST", "/PurchasedItems", [PURCHASE_EXAMPLE] * 1001, ["body"]),
        (
            "POST",
            "/PurchasedItems",
            [PURCHASE_EXAMPLE, {**PURCHASE_EXAMPLE, "TotalPrice": 1.0}],
            ["body", 1, "TotalPrice"],
        ),
    ],
    ids=["bad-enum", "discount-above-price", "array-for-one", "empty-array", "too-many", "one-bad-total"],
)
def test_rejected_input_gets_422_with_the_field_and_publishes_nothing(api_server, settings, method, path, body, where):
    before = {t: end_offsets(settings, t) for t in settings.kafka.topics}
    r = httpx.request(method, f"{api_server.url}{path}", json=body)
    assert r.status_code == 422, r.text
    assert where in [e["loc"] for e in r.json()["detail"]]
    assert {t: end_offsets(settings, t) for t in settings.kafka.topics} == before


def test_oversized_body_gets_413_and_publishes_nothing(api_server, settings):
    before = end_offsets(settings, settings.kafka.purchases_topic)
    big = json.dumps([PURCHASE_EXAMPLE] * 4000).encode()
    assert len(big) > settings.api.max_body_bytes
    r = httpx.post(f"{api_server.url}/PurchasedItems", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    # without a Content-Length (chunked upload) the limit holds too
    r = httpx.post(
        f"{api_server.url}/PurchasedItems",
        content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert end_offsets(settings, settings.kafka.purchases_topic) == before


def test_health_readiness_and_metrics(api_server):
    assert httpx.get(f"{api_server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api_server.url}/readyz").status_code == 200
    httpx.put(f"{api_server.url}/SendEvent", json=event())
    metrics = httpx.get(f"{api_server.url}/metrics").text
    assert 'shopstream_published_records_total{topic="UserEvents"}' in metrics
    assert "http_request_duration_seconds" in metrics


def test_every_answer_of_the_ingestion_routes_is_counted_by_status_class(api_server):
    """The ingestion routes are served past Starlette's middleware (`IngestApi`): their 2xx
    and 4xx (422, 400, 415) still reach the same counters as every other route's."""

    def counts() -> dict[tuple[str, str], float]:
        found = {}
        for family in text_string_to_metric_families(httpx.get(f"{api_server.url}/metrics").text):
            for sample in family.samples:
                if sample.name == "http_requests_total" and sample.labels["handler"] == "/SendEvent":
                    found[(sample.labels["method"], sample.labels["status"])] = sample.value
        return found

    before = counts()
    url = f"{api_server.url}/SendEvent"
    assert httpx.put(url, json=event()).status_code == 200
    assert httpx.put(url, json=event(EventName="Nope")).status_code == 422
    assert httpx.put(url, content=b'{"UserId": NaN}', headers={"content-type": "application/json"}).status_code == 400
    assert httpx.put(url, content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
    after = counts()
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert grown == {("PUT", "2xx"): 1, ("PUT", "4xx"): 3}, grown


def test_stopped_broker_gives_503_then_recovers(tmp_path):
    import tempfile
    from pathlib import Path

    run_dir = Path(tempfile.mkdtemp(prefix="shopstream-broker-"))
    settings = make_settings(run_dir / "run")
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"publish_timeout_s": 2.0})})
    broker = KafkaBroker(settings)
    broker.start()
    try:
        with ServerThread(create_app(settings)) as api:
            assert httpx.put(f"{api.url}/SendEvent", json=event()).status_code == 200
            broker.stop()
            r = httpx.put(f"{api.url}/SendEvent", json=event(), timeout=30)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
            r = httpx.post(f"{api.url}/PurchasedItems", json=[PURCHASE_EXAMPLE], timeout=30)
            assert r.status_code == 503
            assert httpx.get(f"{api.url}/readyz", timeout=30).status_code == 503
            with httpx.Client(base_url=api.url, timeout=30) as client, pytest.raises(httpx.HTTPStatusError):
                api_health(client)  # what `invoke status` and the dashboard ask: not ready
            assert 'shopstream_publish_failures_total{topic="UserEvents"} 1.0' in httpx.get(f"{api.url}/metrics").text
            broker.start()
            ok = [httpx.put(f"{api.url}/SendEvent", json=event(), timeout=30).status_code for _ in range(3)]
            assert ok[-1] == 200, ok
            with httpx.Client(base_url=api.url, timeout=30) as client:
                assert api_health(client) == "ready: reaches Kafka"
    finally:
        broker.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


INGESTION = {"PUT /SendEvent", "POST /PurchasedItems"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_fuzzing_the_openapi_spec_finds_no_server_error(api_server, mode):
    """Schemathesis generates requests from our OpenAPI spec (valid and invalid); none may get a 5xx."""
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= INGESTION
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and operation.label not in INGESTION:
            continue  # nothing to break in a request without a body or parameters

        @hsettings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        call()
