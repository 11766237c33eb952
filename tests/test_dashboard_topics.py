"""The dashboard's topic browser (`/topics`) against the real stores: events and purchases
go through the API, records that break the contract straight into the topics (as a faulty
producer would), the drain stores the events and dead-letters the bad ones, the streaming
job writes the lake and the quarantine; more events come after the drain, so the batch's
group lags. Every figure is compared with an independent reading: offsets and records with
a plain kafka-python consumer, lag with the group's committed offsets as a consumer of that
group reads them, the rejects' counts with MongoDB and Spark's reading of the quarantine.
The page in headless Chromium shows the topics and finds a record by its EventId."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from conftest import ServerThread, read_from, run_until_caught_up
from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.mongo import collections, database, mongo_client
from shopstream.locations import quarantine_url
from shopstream.settings import REPO_ROOT, Settings
from shopstream_batch.drain import drain_user_events
from shopstream_stack.isolated import free_port

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack")]

EVENTS, PURCHASES, LATE = 12, 4, 5  # events drained, purchases streamed, events sent after the drain


def event(run: str, i: int, at: datetime) -> dict:
    return {
        "UserId": f"u{i % 3}-{run}",
        "SessionId": f"s{i % 3}-{run}",
        "EventName": "PageVisited",
        "TimeStamp": at.isoformat(),
        "Attributes": {"ProductId": f"p{i:02d}", "Price": 10.5, "Discount": 0.5},
    }


def purchase(run: str, i: int, at: datetime) -> dict:
    return {
        "SessionId": f"s{i}-{run}",
        "UserId": f"u{i}-{run}",
        "OrderId": f"o-{run}-{i}",
        "TimeStamp": at.isoformat(),
        "TotalPrice": 21.0,
        "Products": [{"ProductId": "p01", "ItemCount": 2, "ItemPrice": 11.0, "ItemDiscount": 0.5}],
        "PaymentType": "PayPal",
    }


def bad_records(run: str) -> tuple[list[bytes], list[bytes]]:
    """(user events, purchases) that break the contract, some with an EventId to find them by."""
    events = [
        b"not json {",
        b"not json {",
        json.dumps({"EventId": f"dead-{run}", "UserId": "x"}).encode(),
        json.dumps({"EventId": f"dead2-{run}", "UserId": "y", "SessionId": "s"}).encode(),  # another reason
    ]
    purchases = [
        json.dumps({"EventId": f"quar-{run}", "OrderId": "o"}).encode(),
        b"[1, 2",
    ]
    return events, purchases


@pytest.fixture(scope="module")
def shop(settings, spark):
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC) - timedelta(minutes=5)
    kafka = settings.kafka.model_copy(
        update={"user_events_topic": f"UserEvents-{run}", "purchases_topic": f"PurchasedItem-{run}"}
    )
    ensure_topics(kafka)
    cfg = settings.model_copy(
        update={
            "run_dir": Path(tempfile.mkdtemp(prefix="shopstream-topics-")),
            "kafka": kafka,
            "mongo": settings.mongo.model_copy(update={"database": f"topics_{run}"}),
            "batch": settings.batch.model_copy(update={"consumer_group": f"topics-{run}"}),
            "streaming": settings.streaming.model_copy(
                update={
                    "output_path": f"tests/topics-{run}/purchases",
                    "quarantine_path": f"tests/topics-{run}/quarantine",
                    "starting_offsets": "earliest",
                }
            ),
        }
    )
    from shopstream_api.main import create_app as api_app

    sent: list[dict] = []  # the API's answers: EventId, Partition, Offset
    bought: list[str] = []
    bad_events, bad_purchases = bad_records(run)
    with ServerThread(api_app(cfg)) as api, httpx.Client(base_url=api.url, timeout=30) as client:
        for i in range(EVENTS):
            sent.append(client.put("/SendEvent", json=event(run, i, now)).raise_for_status().json())
        for i in range(PURCHASES):
            bought += client.post("/PurchasedItems", json=[purchase(run, i, now)]).raise_for_status().json()["EventIds"]
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
        for value in bad_events:
            producer.send(kafka.user_events_topic, value)
        for value in bad_purchases:
            producer.send(kafka.purchases_topic, value)
        producer.flush()
        producer.close()
        report = drain_user_events(cfg)
        assert (report.stored, report.dead_lettered) == (EVENTS, len(bad_events)), report
        run_until_caught_up(spark, cfg)
        for i in range(LATE):  # after the drain: the batch's group lags by these
            client.put("/SendEvent", json=event(run, EVENTS + i, now)).raise_for_status()
    yield {"cfg": cfg, "run": run, "sent": sent, "bought": bought, "bad": (bad_events, bad_purchases)}


@pytest.fixture(scope="module")
def dashboard(shop):
    from shopstream_api.main import create_app as api_app
    from shopstream_dashboard.main import create_app

    cfg = shop["cfg"]
    model = Path(tempfile.mkdtemp(prefix="shopstream-topics-model-")) / "readmodel.duckdb"
    dash = cfg.dashboard.model_copy(update={"port": free_port(), "refresh_s": 1.0, "read_model": model})
    with (
        ServerThread(api_app(cfg)) as api,  # where the replay button's `invoke replay` sends
        ServerThread(
            create_app(cfg.model_copy(update={"dashboard": dash, "api": cfg.api.model_copy(update={"port": api.port})}))
        ) as server,
    ):
        deadline = time.monotonic() + 90
        # the lake's purchases are in the read model (httpx's user agent makes them a script's: a bot's)
        while (sales := get(server, "/api/sales", include_bots="true"))["purchases"] != PURCHASES:
            assert time.monotonic() < deadline, sales
            time.sleep(0.5)
        yield server


def get(server, path: str, **params) -> dict:
    r = httpx.get(f"{server.url}{path}", params=params, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def consumer(cfg: Settings, **options) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, enable_auto_commit=False, **options)


def topic_of(answer: dict, topic: str) -> dict:
    return next(t for t in answer["topics"] if t["topic"] == topic)


# -- the JSON API ----------------------------------------------------------------------------
def test_topics_show_each_partitions_offsets_and_the_groups_lag(dashboard, shop):
    cfg = shop["cfg"]
    got = get(dashboard, "/api/topics")
    assert got["source"]["state"] == "up"
    c = consumer(cfg, group_id=cfg.batch.consumer_group)
    try:
        for topic in cfg.kafka.topics:
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
            ends, begins = c.end_offsets(tps), c.beginning_offsets(tps)
            shown = topic_of(got, topic)
            assert [(p["partition"], p["first"], p["next"]) for p in shown["partitions"]] == [
                (tp.partition, begins[tp], ends[tp]) for tp in tps
            ]
            assert shown["end"] == sum(ends.values())
        topic = cfg.kafka.user_events_topic
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        ends = c.end_offsets(tps)
        committed = {tp.partition: c.committed(tp) or 0 for tp in tps}
    finally:
        c.close()
    group = next(g for g in topic_of(got, topic)["groups"] if g["group"] == cfg.batch.consumer_group)
    assert {p["partition"]: p["lag"] for p in group["partitions"]} == {
        tp.partition: ends[tp] - committed[tp.partition] for tp in tps
    }
    assert group["lag"] == LATE  # the events sent after the drain
    assert topic_of(got, topic)["role"].startswith("user events")


def test_latest_records_and_the_record_at_an_offset_are_the_consumers(dashboard, shop):
    cfg = shop["cfg"]
    topic = cfg.kafka.user_events_topic
    records = read_from(cfg, topic)  # every record, as a plain consumer reads them
    partition = Counter(r.partition for r in records).most_common(1)[0][0]
    mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
    got = get(dashboard, f"/api/topics/{topic}/{partition}", n=3)
    want = list(reversed(mine[-3:]))
    assert [r["offset"] for r in got["records"]] == [r.offset for r in want]
    for shown, r in zip(got["records"], want, strict=True):
        try:
            assert shown["value"] == json.loads(r.value) and shown["raw"] is None
        except ValueError:
            assert shown["value"] is None and shown["raw"] == r.value.decode()
        assert shown["key"] == (r.key.decode() if r.key is not None else None)
        assert datetime.fromisoformat(shown["timestamp"]).timestamp() * 1000 == pytest.approx(r.timestamp)
    first = mine[0]
    at = get(dashboard, f"/api/topics/{topic}/{partition}/{first.offset}")
    assert (at["offset"], at["key"]) == (first.offset, first.key.decode() if first.key is not None else None)
    assert at["value"] == json.loads(first.value) or at["raw"] == first.value.decode()
    past = httpx.get(f"{dashboard.url}/api/topics/{topic}/{partition}/{mine[-1].offset + 1}", timeout=30)
    assert past.status_code == 404, past.text


def test_find_a_record_by_event_id_wherever_it_is(dashboard, shop):
    cfg, run = shop["cfg"], shop["run"]
    sent = shop["sent"][0]
    got = get(dashboard, f"/api/find/{sent['EventId']}")
    assert all(s["state"] == "up" for s in got["sources"]), got["sources"]
    where = {f["where"]: f for f in got["found"]}
    assert where["mongodb events"]["record"]["_id"] == sent["EventId"]
    assert where["mongodb events"]["record"]["UserId"] == f"u0-{run}"
    in_topic = where[f"topic {cfg.kafka.user_events_topic}"]
    assert in_topic["location"] == f"{cfg.kafka.user_events_topic}-{sent['Partition']}@{sent['Offset']}"
    assert in_topic["record"]["value"]["EventId"] == sent["EventId"]
    assert set(where) == {"mongodb events", f"topic {cfg.kafka.user_events_topic}"}

    bought = get(dashboard, f"/api/find/{shop['bought'][0]}")
    where = {f["where"]: f for f in bought["found"]}
    assert set(where) == {"lake purchases", f"topic {cfg.kafka.purchases_topic}"}
    assert where["lake purchases"]["record"]["OrderId"] == f"o-{run}-0"
    assert where["lake purchases"]["record"]["Lines"][0]["ProductId"] == "p01"

    dead = get(dashboard, f"/api/find/dead-{run}")["found"]
    assert sorted(f["where"] for f in dead) == ["dead letters", f"topic {cfg.kafka.user_events_topic}"]
    quarantined = get(dashboard, f"/api/find/quar-{run}")["found"]
    assert sorted(f["where"] for f in quarantined) == ["quarantine", f"topic {cfg.kafka.purchases_topic}"]
    assert next(f for f in quarantined if f["where"] == "quarantine")["record"]["value"]["OrderId"] == "o"
    nowhere = get(dashboard, f"/api/find/none-{run}", scan=5)
    assert nowhere["found"] == [] and nowhere["scanned"] == 5


def quarantine_counts(spark, cfg: Settings) -> Counter:
    rows = spark.read.parquet(quarantine_url(cfg)).groupBy("Reason").count().collect()
    return Counter({r["Reason"]: r["count"] for r in rows})


def test_rejects_are_grouped_by_reason_with_the_replays_marks(dashboard, shop, spark):
    cfg = shop["cfg"]
    client = mongo_client(cfg.mongo)
    db = database(client, cfg.mongo)
    dead_letters = collections(db, cfg.batch).dead_letters
    try:
        by_reason = Counter(d["Reason"] for d in dead_letters.find({}, {"Reason": 1}))
        got = get(dashboard, "/api/rejects")
        assert all(s["state"] == "up" for s in got["sources"]), got["sources"]
        assert {g["reason"]: g["count"] for g in got["dead_letters"]["groups"]} == by_reason
        assert got["dead_letters"]["total"] == sum(by_reason.values()) == len(shop["bad"][0])
        assert len(by_reason) == 3  # invalid JSON twice, and two records missing different fields
        quarantined = quarantine_counts(spark, cfg)
        assert {g["reason"]: g["count"] for g in got["quarantine"]["groups"]} == quarantined
        assert got["quarantine"]["total"] == len(shop["bad"][1])
        # the replay's marks (shared contract of the replay component): shown per group and record
        one = dead_letters.find_one({}, sort=[("_id", 1)])
        stamp = datetime.now(UTC).replace(microsecond=0)
        dead_letters.update_one({"_id": one["_id"]}, {"$set": {"ReplayedAt": stamp, "ReplayedAs": "again-1"}})
        q = next(g for g in got["quarantine"]["groups"])["samples"][0]
        db["quarantine_replays"].insert_one({"_id": q["id"], "ReplayedAt": stamp, "ReplayedAs": "again-2"})
        got = get(dashboard, "/api/rejects")
        group = next(g for g in got["dead_letters"]["groups"] if g["reason"] == one["Reason"])
        assert (group["replayed"], got["dead_letters"]["replayed"]) == (1, 1)
        marked = next(s for s in group["samples"] if s["id"] == one["_id"])
        assert (datetime.fromisoformat(marked["replayed_at"]), marked["replayed_as"]) == (stamp, "again-1")
        assert got["quarantine"]["replayed"] == 1
        sample = next(s for g in got["quarantine"]["groups"] for s in g["samples"] if s["id"] == q["id"])
        assert sample["replayed_as"] == "again-2"
    finally:
        dead_letters.update_many({}, {"$unset": {"ReplayedAt": "", "ReplayedAs": ""}})
        db["quarantine_replays"].delete_many({})
        client.close()


def test_a_broker_that_is_down_shows_as_down(shop):
    """A dashboard whose broker does not answer: the topics say kafka is down, a record read
    answers 503, the search still shows MongoDB's find, all within seconds."""
    from shopstream_dashboard.main import create_app

    cfg = shop["cfg"]
    nowhere = cfg.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    dash = cfg.dashboard.model_copy(
        update={
            "port": free_port(),
            "refresh_s": 1.0,
            "read_model": Path(tempfile.mkdtemp(prefix="shopstream-topics-down-")) / "readmodel.duckdb",
        }
    )
    with ServerThread(create_app(cfg.model_copy(update={"kafka": nowhere, "dashboard": dash}))) as server:
        got = get(server, "/api/topics")
        assert (got["source"]["state"], got["topics"]) == ("down", [])
        r = httpx.get(f"{server.url}/api/topics/{cfg.kafka.user_events_topic}/0", timeout=60)
        assert r.status_code == 503, r.text
        found = get(server, f"/api/find/{shop['sent'][0]['EventId']}")
        states = {s["name"]: s["state"] for s in found["sources"]}
        assert states["kafka"] == "down" and states["mongodb"] == "up"
        assert [f["where"] for f in found["found"]] == ["mongodb events"]


def test_openapi_documents_the_browsers_calls(dashboard):
    spec = get(dashboard, "/openapi.json")
    for path in ("/api/topics", "/api/topics/{topic}/{partition}", "/api/find/{event_id}", "/api/rejects"):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok.get("$ref"), path
    assert "/api/replay" in spec["paths"]


# -- the page, in a real browser -------------------------------------------------------------
def test_page_in_chromium_shows_the_topics_and_finds_a_record_by_event_id(dashboard, shop):
    from shopstream_stack.browser import chromium_page

    cfg = shop["cfg"]
    topic = cfg.kafka.user_events_topic
    c = consumer(cfg)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        ends = c.end_offsets(tps)
    finally:
        c.close()
    sent = shop["sent"][-1]
    errors: list[str] = []
    with chromium_page() as page:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(dashboard.url + "/")
        page.click("#topics-link")
        page.wait_for_url("**/topics")
        section = f".topic[data-topic='{topic}']"
        page.wait_for_selector(f"{section} tr[data-partition]", timeout=30_000)
        for tp in tps:
            shown = page.text_content(f"{section} tr[data-partition='{tp.partition}'] .next").strip()
            assert shown == f"{ends[tp]:,}", tp
        lag = page.text_content(f"{section} tr[data-group='{cfg.batch.consumer_group}'] .lag").strip()
        assert lag == f"{LATE:,}"

        # found by its EventId: in MongoDB, as the drain stored it, and in its topic
        page.fill("#find-id", sent["EventId"])
        page.click("#find-form [type=submit]")
        page.wait_for_selector(".found[data-where='mongodb events']", timeout=30_000)
        stored = json.loads(page.text_content(".found[data-where='mongodb events'] pre"))
        assert (stored["_id"], stored["KafkaOffset"]) == (sent["EventId"], sent["Offset"])
        assert page.get_attribute(f".found[data-where='topic {topic}']", "data-location") == (
            f"{topic}-{sent['Partition']}@{sent['Offset']}"
        )
        assert page.text_content("#find-title").startswith(f"{sent['EventId']}: found in ")
        assert "latest 1,000 records of each partition" in page.text_content("#find-note")

        # a partition's latest records, and the record at an offset
        page.click(f"{section} tr[data-partition='{sent['Partition']}']")
        page.wait_for_selector(f"#records .record[data-offset='{ends[TopicPartition(topic, sent['Partition'])] - 1}']")
        page.fill("#rec-offset", str(sent["Offset"]))
        page.click("#rec-at")
        page.wait_for_function(
            f"document.querySelectorAll('#records .record').length === 1 && "
            f"document.querySelector('#records .record').dataset.offset === '{sent['Offset']}'",
            timeout=30_000,
        )
        assert json.loads(page.text_content("#records .record pre"))["EventId"] == sent["EventId"]

        # the rejects by reason, each with its replay button
        page.wait_for_selector("#dead-letters .reject-group", timeout=30_000)
        assert page.locator("#dead-letters .reject-group").count() == 3
        assert page.get_attribute("#dead-letters-total", "data-total") == str(len(shop["bad"][0]))
        assert page.locator("#quarantine .reject-group").count() == 2
        page.click("#dead-letters .reject-group >> nth=0 >> .replay-dry")
        page.wait_for_function(
            "(() => { const r = document.querySelector('#dead-letters .reject-group .replay-result');"
            " return r && !r.hidden && !/…$/.test(r.textContent); })()",
            timeout=300_000,
        )
        result = json.loads(page.text_content("#dead-letters .reject-group .replay-result"))
        assert (result["source"], result["dry_run"], result["sent"]) == ("dead letters", True, 0)
        out = REPO_ROOT / "reports" / "dashboard"
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "test-topics.png"), full_page=True)
        page.click("#back-link")
        page.wait_for_selector("#kpi-purchases")
    assert not errors, errors


# last: it publishes into the shop's topic, which the tests above count
def test_the_replay_button_replays_a_fixed_dead_letter_once(dashboard, shop):
    """POST /api/replay runs `python -m shopstream_replay` (what `invoke replay` runs): after a
    data fix, the dead letter passes, is sent through the API once and marked; the next replay
    sends nothing. A source other than the rejects is refused."""
    assert httpx.post(f"{dashboard.url}/api/replay", json={"source": "lake"}, timeout=30).status_code == 422
    cfg, run = shop["cfg"], shop["run"]
    client = mongo_client(cfg.mongo)
    letters = collections(database(client, cfg.mongo), cfg.batch).dead_letters
    try:
        bad = json.dumps({"EventId": f"dead2-{run}", "UserId": "y", "SessionId": "s"}).encode()
        letter = letters.find_one({"Value": bad})
        fixed = {
            **event(run, 99, datetime.now(UTC)),
            "EventId": f"dead2-{run}",
            "IngestedAt": datetime.now(UTC).isoformat(),
        }
        letters.update_one({"_id": letter["_id"]}, {"$set": {"Value": json.dumps(fixed).encode()}})

        def replay() -> dict:
            body = {"source": "dead-letters", "reason": letter["Reason"]}
            r = httpx.post(f"{dashboard.url}/api/replay", json=body, timeout=600)
            assert r.status_code == 200, r.text
            return r.json()

        first = replay()
        assert (first["source"], first["dry_run"], first["sent"], first["already_replayed"]) == (
            "dead letters",
            False,
            1,
            0,
        ), first
        marked = letters.find_one({"_id": letter["_id"]})
        assert marked["ReplayedAs"] == f"dead2-{run}" and marked["ReplayedAt"] is not None

        def copies() -> list[str]:  # the UserIds of the topic's records with that EventId
            mine = (json.loads(r.value) for r in read_from(cfg, cfg.kafka.user_events_topic) if run.encode() in r.value)
            return sorted(v["UserId"] for v in mine if isinstance(v, dict) and v.get("EventId") == f"dead2-{run}")

        assert copies() == sorted(["y", fixed["UserId"]])  # the faulty producer's, and the replayed one
        second = replay()
        assert (second["sent"], second["already_replayed"]) == (0, 1), second
        assert copies() == sorted(["y", fixed["UserId"]])  # nothing sent again
    finally:
        client.close()
