"""`invoke audit`: the reconciliation on plain inputs, the checkpoint and ledger readers, and
the whole pipeline against the real servers (API -> Kafka -> drain + aggregation ->
MongoDB, streaming -> Parquet on S3): nothing missing or doubled after a clean run, then
exactly the damage done by hand (an event deleted, a count bumped, a lake file deleted, a
lake row doubled, an acknowledged record that never reached Kafka)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from shopstream import ledger
from shopstream.settings import Settings
from shopstream_audit import sources
from shopstream_audit.reconcile import (
    Audit,
    Copies,
    CountDoc,
    Stage,
    count_stage,
    doubled_stage,
    kafka_stage,
    store_stage,
    within_end,
)

# -- the logic, on plain inputs ---------------------------------------------------------------


def copies(**where: list[tuple[int, int]]) -> Copies:
    c = Copies()
    for event_id, positions in where.items():
        for p, o in positions:
            c.add(event_id, p, o)
    return c


def test_kafka_needs_one_copy_of_each_acknowledged_record_and_only_counts_the_rest():
    acked = {"a": (0, 1), "b": (0, 2), "c": (1, 0), "old": (0, 0)}
    seen = copies(a=[(0, 1), (0, 7)], b=[(0, 2)])
    seen.unacknowledged, seen.unreadable = 3, 1
    s = kafka_stage("UserEvents", acked, seen, beginning={0: 1, 1: 0}, end={0: 9, 1: 4})
    assert (s.acknowledged, s.expected, s.found, s.missing, s.missing_sample) == (4, 3, 2, 1, ["c"])
    assert s.doubled is None and s.differs  # copies are not an error, a missing record is
    assert s.notes == [
        "1 with 2+ copies (1 extra: retries, published again)",
        "1 past the topic's retention (not checked)",
        "3 records not in the ledger",
        "1 unreadable records (no JSON or no EventId)",
    ]
    assert not kafka_stage("T", {"a": (0, 1)}, copies(a=[(0, 1), (0, 2), (0, 3)]), {}, {0: 4}).differs


def test_a_store_is_due_what_its_stage_committed_past_and_the_rest_is_pending():
    seen = copies(stored=[(0, 5)], later=[(0, 12)], lost=[(0, 3)], early=[(1, 0)], second=[(1, 4), (0, 2)])
    acked = ["stored", "later", "lost", "early", "second", "gone"]  # "gone": no copy left in Kafka
    s = store_stage("MongoDB events", acked, seen, {0: 10, 1: 0}, found={"stored", "early"})
    assert (s.acknowledged, s.expected, s.found, s.pending) == (6, 4, 2, 1)
    assert (s.missing, s.missing_sample) == (3, ["gone", "lost", "second"])
    assert s.differs and s.doubled == 0

    unknown = store_stage("Lake", acked, seen, None, found={"stored"}, unchecked="checkpoint not local")
    assert (unknown.expected, unknown.found, unknown.missing_sample, unknown.pending) == (None, 1, ["gone"], 4)
    assert Audit([store_stage("x", ["later"], seen, None, set(), unchecked="why")]).exit_code == 2


def test_samples_are_the_first_ten_in_order():
    acked = [f"e{i:03d}" for i in range(50, 0, -1)]
    s = store_stage("x", acked, Copies(), {}, found=set())
    assert s.missing == 50 and s.missing_sample == [f"e{i:03d}" for i in range(1, 11)]


def test_event_count_against_the_stored_events_of_applied_batches():
    counts = {
        ("u1", "PageVisited"): CountDoc(3, frozenset({"b1"})),  # right
        ("u2", "PageVisited"): CountDoc(2, frozenset({"b1"})),  # one more than stored: doubled 1
        ("u4", "AddedBasket"): CountDoc(5, frozenset({"b3"})),  # b3 merged, not marked applied yet: missing 1
        ("u5", "AddedBasket"): CountDoc(1),  # no event at all: doubled 1
    }
    stored = {
        ("u1", "PageVisited"): {"b1": 3},
        ("u2", "PageVisited"): {"b1": 1, None: 4},  # 4 not claimed yet: pending
        ("u3", "PageVisited"): {"b2": 2},  # b2 claimed, not applied: pending
        ("u4", "AddedBasket"): {"b3": 6},
    }
    s = count_stage(counts, {"b1"}, stored)
    assert (s.expected, s.found, s.missing, s.doubled, s.pending) == (10, 9, 1, 2, 6)
    assert s.missing_sample == ["u4/AddedBasket: EventCount 5, counted events stored 6"]
    assert s.doubled_sample == [
        "u2/PageVisited: EventCount 2, counted events stored 1",
        "u5/AddedBasket: EventCount 1, counted events stored 0",
    ]
    assert not count_stage({("u", "e"): CountDoc(2)}, {"b"}, {("u", "e"): {"b": 2, None: 1}}).differs


def test_doubled_rows_and_exit_codes():
    s = doubled_stage(Stage("Lake"), {"x": 3, "y": 2})
    assert (s.doubled, s.doubled_sample) == (3, ["x", "y"])
    assert Audit([s]).exit_code == 1
    assert Audit([Stage("a"), Stage("b", unchecked="down")]).exit_code == 2
    assert Audit([Stage("a"), Stage("b", missing=1, unchecked="down")]).exit_code == 1
    assert Audit([Stage("a", doubled=None)]).exit_code == 0


def test_a_position_past_the_partitions_end_makes_nothing_there_due():
    assert within_end({0: 5, 1: 9, 2: 4}, {0: 7, 1: 6, 2: 4}) == ({0: 5, 1: 0, 2: 4}, [1])


def test_the_printed_report_names_rewinds_an_api_that_does_not_answer_and_what_was_not_checked(tmp_path):
    from shopstream.rewinds import Rewind
    from shopstream_audit.report import Report, render

    cfg = Settings(_env_file=None, run_dir=tmp_path)
    at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    rewound = [
        Rewind("drain", "UserEvents", p, 40 + p, 30 + p, 35 + p, at.replace(minute=p), "position past the end")
        for p in range(6)
    ]
    rewound.append(Rewind("streaming", "PurchasedItem", 1, 9, 7, 8, at.replace(hour=11), "records replaced"))
    lake = store_stage(
        "Lake (Parquet)",
        ["p1", "p2"],
        copies(p1=[(0, 1)], p2=[(0, 2)]),
        None,
        {"p1"},
        unchecked="the checkpoint s3a://b/c is not on local disk",
    )
    mongo = store_stage("MongoDB events", ["e1"], copies(e1=[(0, 0)]), {0: 1}, set())
    led = sources.Ledger(
        {"UserEvents": {"e1": (0, 0)}, "PurchasedItem": {"p1": (0, 1), "p2": (0, 2)}},
        lines=4,
        again={"UserEvents": 1},
        oldest_hour=at,
    )
    api = sources.ApiMetrics("http://127.0.0.1:1/metrics", error="ConnectError: refused")
    report = Report(Audit([mongo, lake]), led, api, rewinds=rewound, gone_files=["raw/purchases/x.parquet"])
    out = io.StringIO()
    render(report, cfg, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "Ledger: 4 lines since 2026-11-22 10:00 UTC" in text and "1 acknowledged more than once" in text
    assert "missing at MongoDB events (1 of 1): e1" in text
    assert "not checked at Lake (Parquet): the checkpoint s3a://b/c is not on local disk" in text
    assert "Rewinds (a stage read records again after the broker lost a tail): drain 6, streaming 1" in text
    assert "UserEvents-1" not in text and "UserEvents-2" in text  # the last 5 only
    assert "PurchasedItem-1" in text and "records replaced" in text
    assert "the API at http://127.0.0.1:1/metrics does not answer (ConnectError: refused)" in text
    assert "gone: committed lake file raw/purchases/x.parquet" in text
    assert "differences: 1 missing, 0 doubled (exit 1)" in text and report.exit_code == 1

    empty = Report(
        Audit([]),
        sources.Ledger({"UserEvents": {}, "PurchasedItem": {}}, folder=tmp_path / "ledger"),
        sources.ApiMetrics("u", values={"shopstream_broker_losses_total": {"UserEvents": 2.0}}),
    )
    out = io.StringIO()
    render(empty, cfg, Console(file=out, width=200, color_system=None))
    text = out.getvalue()
    assert "The ledger is empty" in text and "Rewinds: none recorded" in text and "all good" in text
    assert "broker losses (shopstream_broker_losses_total) │ 2 │ 0" in " ".join(text.split())
    assert "not exported" in text  # the other counters


def test_event_id_of_record_values():
    assert sources.event_id_of(b'{"EventId": "k:0", "UserId": "u"}') == "k:0"
    for value in [None, b"", b"{oops", b"\xff\xfe", b"[1]", b'{"UserId": "u"}', b'{"EventId": 7}', b'{"EventId": ""}']:
        assert sources.event_id_of(value) is None, value


# -- checkpoint and ledger readers, on files --------------------------------------------------


def write_checkpoint(folder: Path, batches: dict[int, str], commits: list[int]) -> None:
    (folder / "offsets").mkdir(parents=True)
    (folder / "commits").mkdir()
    for n, source in batches.items():
        (folder / "offsets" / str(n)).write_text(
            f'v1\n{{"batchWatermarkMs":0,"batchTimestampMs":1,"conf":{{}}}}\n{source}\n'
        )
        (folder / "offsets" / f".{n}.crc").write_bytes(b"crc")
    for n in commits:
        (folder / "commits" / str(n)).write_text('v1\n{"nextBatchWatermarkMs":0}\n')


def test_checkpoint_offsets_of_the_latest_committed_batch(tmp_path):
    write_checkpoint(
        tmp_path / "cp",
        {
            0: '{"PurchasedItem":{"0":2,"1":0}}',
            1: '{"PurchasedItem":{"0":5,"1":3,"@marks":{"0":[5,"ab"]}},"@epoch":7}',
            2: '{"PurchasedItem":{"0":9,"1":9}}',  # planned, not committed: not the job's position yet
        },
        commits=[0, 1],
    )
    cp = sources.read_checkpoint(str(tmp_path / "cp"), "PurchasedItem")
    assert (cp.batch, cp.offsets, cp.problem) == (1, {0: 5, 1: 3}, None)
    assert sources.read_checkpoint(f"file://{tmp_path / 'cp'}", "PurchasedItem").offsets == {0: 5, 1: 3}

    assert sources.source_offsets('v1\n{}\n-\n{"Other":{"0":1}}\n{"T":{"2":4}}', "T") == {2: 4}
    assert sources.source_offsets('v1\n{}\n{"Other":{"0":1}}', "T") is None
    none_yet = sources.read_checkpoint(str(tmp_path / "absent"), "PurchasedItem")
    assert (none_yet.batch, none_yet.offsets, none_yet.problem) == (None, {}, None)
    remote = sources.read_checkpoint("s3a://bucket/checkpoints/purchases", "PurchasedItem")
    assert remote.problem and "not on local disk" in remote.problem
    write_checkpoint(tmp_path / "other", {0: '{"Elsewhere":{"0":1}}'}, commits=[0])
    assert (
        "has no offsets of PurchasedItem" in sources.read_checkpoint(str(tmp_path / "other"), "PurchasedItem").problem
    )


def test_ledger_once_per_topic_and_event_id(tmp_path):
    cfg = Settings(_env_file=None, run_dir=tmp_path)
    path = ledger.ledger_file(cfg, "test")
    path.parent.mkdir(parents=True)
    path.write_bytes(
        b"".join(
            [
                ledger.line("UserEvents", 0, 4, "a"),
                ledger.line("UserEvents", 1, 0, "b"),
                ledger.line("UserEvents", 0, 9, "a"),  # a retry, or published again after a broker loss
                ledger.line("PurchasedItem", 2, 1, "a"),  # the same EventId on the other topic is another record
                ledger.line("Elsewhere", 0, 0, "z"),
            ]
        )
        + b"UserEvents\t0\t10\tcut-by-a-crash"
    )
    led = sources.read_ledger(cfg)
    assert led.acked == {"UserEvents": {"a": (0, 4), "b": (1, 0)}, "PurchasedItem": {"a": (2, 1)}}
    assert (led.lines, led.again, led.other_topics) == (5, {"UserEvents": 1}, {"Elsewhere": 1})
    assert led.oldest_hour == datetime.strptime(path.stem.rsplit("-", 1)[-1], "%Y%m%d%H").replace(tzinfo=UTC)


# -- the whole pipeline, against the real servers ---------------------------------------------


@pytest.fixture
def pipeline(stack, settings, tmp_path):
    """Settings with topics, consumer group, database, lake paths and ledger of this test's
    own, and an ingestion API (real uvicorn) publishing to those topics."""
    from conftest import ServerThread
    from shopstream.adapters.kafka import ensure_topics
    from shopstream.adapters.mongo import mongo_client
    from shopstream_api.main import create_app

    tag = uuid.uuid4().hex[:8]
    kafka = settings.kafka.model_copy(
        update={"user_events_topic": f"UserEvents-audit-{tag}", "purchases_topic": f"PurchasedItem-audit-{tag}"}
    )
    ensure_topics(kafka)
    cfg = settings.model_copy(
        update={
            "kafka": kafka,
            "mongo": settings.mongo.model_copy(update={"database": f"audit_{tag}"}),
            "batch": settings.batch.model_copy(update={"consumer_group": f"audit-{tag}"}),
            "streaming": settings.streaming.model_copy(
                update={
                    "output_path": f"tests/audit-{tag}/purchases",
                    "quarantine_path": f"tests/audit-{tag}/quarantine",
                }
            ),
            "api": settings.api.model_copy(update={"journal_dir": tmp_path / "journal"}),
        }
    )
    with ServerThread(create_app(cfg)) as server:
        yield cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": server.port})})
    client = mongo_client(cfg.mongo)
    client.drop_database(cfg.mongo.database)
    client.close()


def acknowledge(cfg: Settings, topic: str, acks: list[tuple[str, int, int]]) -> None:
    """Ledger lines for what the API answered 2xx, unless the API wrote them itself."""
    have = {(a.topic, a.event_id) for a in ledger.acknowledged(cfg)}
    lines = [ledger.line(topic, p, o, e) for e, p, o in acks if (topic, e) not in have]
    path = ledger.ledger_file(cfg, "test")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as f:
        f.write(b"".join(lines))


def send_events(cfg: Settings, run: str, first: int, n: int) -> list[dict]:
    """PUT /SendEvent n times (every fourth one twice with its Idempotency-Key: a client retry)."""
    names = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
    answers = []
    for i in range(first, first + n):
        body = {
            "UserId": f"u{i % 4}-{run}",
            "SessionId": f"s-{run}-{i}",
            "EventName": names[i % 3],
            "TimeStamp": "2026-11-22T10:15:00Z",
            "Attributes": {"ProductId": f"sku-{i}", "Price": 10.5, "Discount": 0.5},
        }
        for _ in range(2 if i % 4 == 0 else 1):
            r = httpx.put(
                f"{cfg.api.base_url}/SendEvent", json=body, headers={"Idempotency-Key": f"{run}-e{i}"}, timeout=30
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
    acknowledge(cfg, cfg.kafka.user_events_topic, [(a["EventId"], a["Partition"], a["Offset"]) for a in answers])
    return answers


def post_purchases(cfg: Settings, run: str, key: str, which: range, times: int = 1) -> list[str]:
    from conftest import read_from
    from test_streaming import purchase

    bodies = [purchase(run, i) for i in which]
    for _ in range(times):  # more than once: a client retry with the same key
        r = httpx.post(f"{cfg.api.base_url}/PurchasedItems", json=bodies, headers={"Idempotency-Key": key}, timeout=30)
        assert r.status_code == 200, r.text
    event_ids = r.json()["EventIds"]
    topic = cfg.kafka.purchases_topic
    where = {}
    for rec in read_from(cfg, topic, {p: 0 for p in range(cfg.kafka.partitions)}):
        where.setdefault(json.loads(rec.value)["EventId"], (rec.partition, rec.offset))
    acknowledge(cfg, topic, [(e, *where[e]) for e in event_ids])
    return event_ids


def produce(cfg: Settings, topic: str, value: bytes, acknowledged: bool) -> None:
    """A record straight into the topic (not through the API), with a ledger line if `acknowledged`."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    meta = producer.send(topic, key=b"u-odd", value=value).get(timeout=30)
    producer.close()
    if acknowledged:
        acknowledge(cfg, topic, [(json.loads(value)["EventId"], meta.partition, meta.offset)])


def audit(cfg: Settings) -> tuple[sources.Ledger, dict[str, Stage], int, str, object]:
    from shopstream_audit.report import collect, render

    out = io.StringIO()
    console = Console(file=out, width=250, color_system=None)
    report = collect(cfg, console)
    render(report, cfg, console)
    return report.ledger, {s.name: s for s in report.audit.stages}, report.exit_code, out.getvalue(), report


def audit_cli(cfg: Settings, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m shopstream_audit` in a process of its own, configured by environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOPSTREAM_")} | cfg.to_env() | {"COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "shopstream_audit"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def numbers(s: Stage) -> tuple:
    return s.acknowledged, s.expected, s.found, s.missing, s.doubled, s.pending


def lake_file_ids(cfg: Settings) -> dict[str, list[str]]:
    from shopstream.adapters.lake import LakeFiles
    from shopstream.adapters.s3 import s3_client

    files = LakeFiles(s3_client(cfg.s3), cfg)
    table = {}
    for key in sorted(files.committed()):
        table[key] = files.read([key]).column("EventId").to_pylist()
    return table


def double_one_row(cfg: Settings, key: str) -> str:
    """A committed file of one row copied from `key`, listed in the sink's latest log file:
    what a sink that wrote a batch twice would leave. Returns the row's EventId."""
    from shopstream.adapters.s3 import s3_client

    client, bucket = s3_client(cfg.s3), cfg.s3.bucket
    resp = client.get_object(bucket, key)
    row = pq.read_table(io.BytesIO(resp.read())).slice(0, 1)
    resp.close()
    resp.release_conn()
    buf = io.BytesIO()
    pq.write_table(row, buf)
    data = buf.getvalue()
    copy = key.rsplit("/", 1)[0] + f"/part-audit-copy-{uuid.uuid4().hex[:6]}.parquet"
    client.put_object(bucket, copy, io.BytesIO(data), len(data))
    prefix = cfg.streaming.output_path.strip("/") + "/_spark_metadata/"
    logs = [
        o.object_name
        for o in client.list_objects(bucket, prefix=prefix)
        if o.object_name.rsplit("/", 1)[-1].removesuffix(".compact").isdigit()
    ]
    latest = max(logs, key=lambda k: int(k.rsplit("/", 1)[-1].removesuffix(".compact")))
    resp = client.get_object(bucket, latest)
    log = resp.read().decode()
    resp.close()
    resp.release_conn()
    entry = {
        "path": f"s3a://{bucket}/{copy}",
        "size": len(data),
        "isDir": False,
        "modificationTime": int(time.time() * 1000),
        "blockReplication": 1,
        "blockSize": 33554432,
        "action": "add",
    }
    log = log.rstrip("\n") + "\n" + json.dumps(entry) + "\n"
    client.put_object(bucket, latest, io.BytesIO(log.encode()), len(log.encode()))
    return row.column("EventId")[0].as_py()


@pytest.mark.services
def test_audit_finds_every_acknowledged_record_then_exactly_the_damage(pipeline, spark, tmp_path):
    from conftest import run_until_caught_up
    from shopstream.adapters.lake import LakeFiles
    from shopstream.adapters.mongo import mongo_client
    from shopstream.adapters.s3 import s3_client
    from shopstream_batch.aggregate import update_event_counts
    from shopstream_batch.drain import drain_user_events

    cfg, run = pipeline, uuid.uuid4().hex[:6]
    ue, pi = cfg.kafka.user_events_topic, cfg.kafka.purchases_topic
    events = {a["EventId"]: a for a in send_events(cfg, run, 0, 12)}  # 3 of them sent twice
    first = post_purchases(cfg, run, f"{run}-p1", range(0, 4), times=2)
    # acknowledged, yet not what the contract says: found in the dead letters and in quarantine
    odd_event, odd_purchase = f"odd-e-{run}", f"odd-p-{run}"
    produce(cfg, ue, json.dumps({"EventId": odd_event, "UserId": "u-odd"}).encode(), acknowledged=True)
    produce(cfg, pi, json.dumps({"EventId": odd_purchase, "TotalPrice": -1}).encode(), acknowledged=True)
    produce(cfg, ue, b"{not json", acknowledged=False)
    assert drain_user_events(cfg).stored == 12
    assert update_event_counts(cfg).events_counted == 12
    run_until_caught_up(spark, cfg)
    second = post_purchases(cfg, run, f"{run}-p2", range(4, 7))
    run_until_caught_up(spark, cfg)
    later_events = send_events(cfg, run, 12, 3)  # not drained yet: pending
    later_purchase = post_purchases(cfg, run, f"{run}-p3", range(7, 8))  # not streamed yet: pending

    led, stages, code, text, report = audit(cfg)
    assert {t: len(ids) for t, ids in led.acked.items()} == {ue: 16, pi: 9}
    assert numbers(stages[f"Kafka {ue}"]) == (16, 16, 16, 0, None, 0)
    assert stages[f"Kafka {ue}"].notes == [
        "4 with 2+ copies (4 extra: retries, published again)",  # events 0, 4, 8, 12
        "1 unreadable records (no JSON or no EventId)",
    ]
    assert numbers(stages[f"Kafka {pi}"]) == (9, 9, 9, 0, None, 0)
    assert "4 with 2+ copies" in stages[f"Kafka {pi}"].notes[0]
    assert numbers(stages["MongoDB events"]) == (16, 13, 13, 0, 0, 3)
    assert "1 of them in the dead letters" in stages["MongoDB events"].notes
    assert numbers(stages["EventCount"]) == (None, 12, 12, 0, 0, 0)
    assert numbers(stages["Lake (Parquet)"]) == (9, 8, 8, 0, 0, 1)
    assert "1 of them in quarantine" in stages["Lake (Parquet)"].notes
    assert code == 0 and not report.gone_files and report.rewinds_error is None, text
    assert report.api.error is None and report.api.values["shopstream_published_records_total"][ue] >= 15
    assert "all good" in text
    cli = audit_cli(cfg, tmp_path)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "all good" in cli.stdout and "MongoDB events" in cli.stdout

    # MongoDB and S3 unreachable: those stages are not checked, and the audit does not pass
    from shopstream_stack.isolated import free_port

    down = cfg.model_copy(
        update={
            "mongo": cfg.mongo.model_copy(update={"uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"}),
            "s3": cfg.s3.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}"}),
        }
    )
    _, stages, code, text, _ = audit(down)
    assert code == 2 and "could not be checked" in text, text
    for name in ["MongoDB events", "EventCount", "Lake (Parquet)"]:
        assert stages[name].unchecked.startswith("could not read: ") and stages[name].expected is None, text
    assert numbers(stages[f"Kafka {ue}"]) == (16, 16, 16, 0, None, 0)

    # the damage
    db = mongo_client(cfg.mongo)[cfg.mongo.database]
    deleted = sorted(events)[0]
    gone_doc = db[cfg.batch.events_collection].find_one_and_delete({"_id": deleted})
    bumped = db[cfg.batch.counts_collection].find_one_and_update(
        {"UserId": {"$ne": gone_doc["UserId"]}}, {"$inc": {"EventCount": 1}}
    )
    files = lake_file_ids(cfg)
    assert sorted(map(sorted, files.values())) == sorted([sorted(first), sorted(second)])  # one file per run
    (first_key,) = [k for k, ids in files.items() if set(ids) == set(first)]
    (second_key,) = [k for k, ids in files.items() if set(ids) == set(second)]
    s3_client(cfg.s3).remove_object(cfg.s3.bucket, first_key)
    doubled = double_one_row(cfg, second_key)
    assert len(LakeFiles(s3_client(cfg.s3), cfg).committed()) == 3
    ghost = f"ghost-{run}"  # acknowledged, never reached Kafka
    acknowledge(cfg, ue, [(ghost, 0, 0)])

    led, stages, code, text, report = audit(cfg)
    kafka = stages[f"Kafka {ue}"]
    assert numbers(kafka) == (17, 17, 16, 1, None, 0) and kafka.missing_sample == [ghost]
    assert numbers(stages[f"Kafka {pi}"]) == (9, 9, 9, 0, None, 0)
    mongo = stages["MongoDB events"]
    assert numbers(mongo) == (17, 14, 12, 2, 0, 3) and mongo.missing_sample == sorted([deleted, ghost])
    counts = stages["EventCount"]
    assert numbers(counts) == (None, 11, 11, 0, 2, 0)
    pair_a, pair_b = f"{gone_doc['UserId']}/{gone_doc['EventName']}", f"{bumped['UserId']}/{bumped['EventName']}"
    assert sorted(line.split(":")[0] for line in counts.doubled_sample) == sorted([pair_a, pair_b])
    lake = stages["Lake (Parquet)"]
    assert numbers(lake) == (9, 8, 4, 4, 1, 1)
    assert lake.missing_sample == sorted(first) and lake.doubled_sample == [doubled]
    assert report.gone_files == [first_key]
    assert code == 1, text
    assert "differences: 7 missing, 3 doubled" in text
    cli = audit_cli(cfg, tmp_path)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    for word in [ghost, deleted, doubled, *first, pair_a, pair_b, first_key, "differences"]:
        assert word in cli.stdout, (word, cli.stdout)
    assert later_events and later_purchase  # posted, acknowledged, pending: never counted as missing


@pytest.mark.services
def test_audit_beside_a_running_pipeline_finds_nothing_missing(pipeline, spark):
    """The API acknowledging, the drain and aggregation running in a loop and a streaming
    batch under way while the audit runs: each stage is counted up to what it committed, so
    nothing is missing or doubled, only pending; once everything has caught up, nothing is pending."""
    import threading

    from conftest import run_until_caught_up
    from shopstream_batch.aggregate import update_event_counts
    from shopstream_batch.drain import drain_user_events

    cfg, run = pipeline, uuid.uuid4().hex[:6]
    send_events(cfg, run, 0, 6)
    post_purchases(cfg, run, f"{run}-p0", range(0, 3))
    stop, failures = threading.Event(), []

    def loop(step, once: bool = False) -> None:
        try:
            while not stop.is_set():
                step()
                if once:
                    return
        except Exception as e:  # noqa: BLE001 - reported by the test below
            failures.append(e)

    fed = iter(range(6, 10_000, 2))

    def feed() -> None:
        i = next(fed)
        send_events(cfg, run, i, 2)
        post_purchases(cfg, run, f"{run}-p{i}", range(i, i + 1))

    workers = [
        threading.Thread(target=loop, args=(feed,)),
        threading.Thread(target=loop, args=(lambda: (drain_user_events(cfg), update_event_counts(cfg)),)),
        threading.Thread(target=loop, args=(lambda: run_until_caught_up(spark, cfg), True)),
    ]
    for w in workers:
        w.start()
    audits = []
    try:
        while workers[2].is_alive() or len(audits) < 2:
            _, stages, code, text, _ = audit(cfg)
            audits.append(stages)
            assert code == 0, text
    finally:
        stop.set()
        for w in workers:
            w.join(300)
    assert not failures, failures
    assert any(s["MongoDB events"].found for s in audits) and any(s["Lake (Parquet)"].pending for s in audits)

    for _ in range(10):  # until the drain says nothing waits (a group member just gone may hold partitions)
        if drain_user_events(cfg).done:
            break
    update_event_counts(cfg)
    run_until_caught_up(spark, cfg)
    led, stages, code, text, _ = audit(cfg)
    assert code == 0, text
    for name in ["MongoDB events", "EventCount", "Lake (Parquet)"]:
        assert stages[name].pending == 0 and stages[name].found == stages[name].expected > 0, (name, text)
    assert stages["MongoDB events"].found == len(led.acked[cfg.kafka.user_events_topic])
    assert stages["Lake (Parquet)"].found == len(led.acked[cfg.kafka.purchases_topic])
