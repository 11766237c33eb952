"""`invoke replay` against the real servers: files, dead letters and quarantine through the API,
each record stored once however often it is replayed.

Each test has its own topics, MongoDB database, lake paths and API (publishing to those
topics); the replay runs as users run it (`python -m shopstream_replay ... --json`, configured
by environment only). Expected ids and verdicts are computed here from the files themselves.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer

from conftest import ServerThread, end_offsets, invoke, job_settings, run_until_caught_up
from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.lake import LakeFiles
from shopstream.adapters.mongo import QUARANTINE_REPLAYS_COLLECTION, mongo_client
from shopstream.adapters.s3 import s3_client
from shopstream.contracts import Purchase, UserEvent
from shopstream.settings import REPO_ROOT, Settings
from shopstream_api.main import create_app
from shopstream_batch.drain import drain_user_events

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack")]

SAMPLES = REPO_ROOT / "components" / "replay" / "samples"
PAYMENTS = ["CreditCard", "PayPal", "DebitCard", "GiftCard"]


@pytest.fixture
def cfg(stack, settings, tmp_path):
    """Settings with this test's own topics, consumer group, database and lake paths, and an API
    of its own publishing to those topics (its port in the settings)."""
    tag = uuid.uuid4().hex[:8]
    own = job_settings(settings, f"replay-{tag}", own_topic=True)
    own = own.model_copy(
        update={
            "kafka": own.kafka.model_copy(update={"user_events_topic": f"UserEvents-{tag}"}),
            "mongo": own.mongo.model_copy(update={"database": f"replay_{tag}"}),
            "batch": own.batch.model_copy(update={"consumer_group": f"batch-{tag}"}),
        }
    )
    ensure_topics(own.kafka)
    with ServerThread(create_app(own), forwarded_allow_ips=own.api.trusted_proxies) as api:
        yield own.model_copy(update={"api": own.api.model_copy(update={"port": api.port})})
    client = mongo_client(own.mongo)
    client.drop_database(own.mongo.database)
    client.close()


def replay(cfg: Settings, *args: str, code: int = 0) -> dict:
    """`python -m shopstream_replay ARGS --json` in a process of its own; its summary."""
    env = {**os.environ, **cfg.to_env()}
    out = subprocess.run(
        [sys.executable, "-m", "shopstream_replay", *args, "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == code, out.stdout + out.stderr
    return json.loads(out.stdout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def purchase_row(run: str, i: int) -> dict:
    lines = [
        {"ProductId": f"sku-{i}-{n}", "ItemCount": 1 + (i + n) % 3, "ItemPrice": 5 + i + n / 4, "ItemDiscount": 0.5}
        for n in range(1 + i % 3)
    ]
    total = sum(Decimal(str(x["ItemCount"])) * (Decimal(str(x["ItemPrice"])) - Decimal("0.5")) for x in lines)
    return {
        "order_id": f"order-{run}-{i}",
        "user_id": f"user-{i % 4}",
        "session_id": f"sess-{run}-{i}",
        "time_stamp": (datetime(2025, 6, 1, 8, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
        "total_price": f"{total:.2f}",
        "payment_type": PAYMENTS[i % len(PAYMENTS)],
        "products": json.dumps(lines),
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def csv_verdicts(path: Path) -> dict[int, bool]:
    """Line -> does the row satisfy the contract, decided here: the cells as JSON values, by hand."""
    out = {}
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):  # one line per row: no cell spans lines
            body = {
                "OrderId": row["order_id"],
                "UserId": row["user_id"],
                "SessionId": row["session_id"],
                "TimeStamp": row["time_stamp"],
                "TotalPrice": float(row["total_price"]),
                "PaymentType": row["payment_type"],
                "Products": json.loads(row["products"]),
            }
            try:
                Purchase.model_validate(body)
                out[line] = True
            except ValueError:
                out[line] = False
    return out


def lake_rows(cfg: Settings, path: str, columns: list[str]) -> list[dict]:
    """The committed rows of a lake path, read with pyarrow (not through replay's own reader)."""
    client = s3_client(cfg.s3)
    st = cfg.streaming.model_copy(update={"output_path": path})
    files = LakeFiles(client, cfg.model_copy(update={"streaming": st}))
    table = files.read(sorted(files.committed()), columns=columns)
    return [] if table is None else table.select(columns).to_pylist()


def test_a_csv_of_purchases_replayed_twice_is_in_the_lake_once(cfg, spark, tmp_path):
    run = uuid.uuid4().hex[:6]
    rows = [purchase_row(run, i) for i in range(14)]
    rows[4]["total_price"] = "1.00"  # the lines do not add up to it
    rows[9]["payment_type"] = "Cheque"
    path = tmp_path / "orders.csv"
    write_csv(path, rows)
    verdicts = csv_verdicts(path)
    expected = {f"rp-{digest(path)}-{line}" for line, ok in verdicts.items() if ok}
    assert len(expected) == 12

    first = replay(cfg, "file", str(path))
    assert (first["kind"], first["read"], first["sent"], first["already_stored"]) == ("purchases", 14, 12, 0)
    assert sorted(r["where"] for r in first["rejects"]) == sorted(
        f"orders.csv:{n}" for n, ok in verdicts.items() if not ok
    )
    run_until_caught_up(spark, cfg)

    second = replay(cfg, "file", str(path))  # the lake holds them all: nothing is sent
    assert (second["read"], second["sent"], second["already_stored"]) == (14, 0, 12)
    assert sum(second["rejected"].values()) == 2
    run_until_caught_up(spark, cfg)

    stored = lake_rows(cfg, cfg.streaming.output_path, ["EventId", "OrderId", "TotalPrice"])
    assert sorted(r["EventId"] for r in stored) == sorted(expected)  # each once
    itself = replay(cfg, "lake")  # the lake replayed into itself: it holds every record
    assert (itself["read"], itself["sent"], itself["already_stored"]) == (12, 0, 12)
    by_order = {r["OrderId"]: r["TotalPrice"] for r in stored}
    assert by_order == {
        row["order_id"]: Decimal(row["total_price"]) for line, row in enumerate(rows, start=2) if verdicts[line]
    }


def test_an_events_file_replayed_twice_is_stored_once(cfg, tmp_path):
    run = uuid.uuid4().hex[:6]
    lines = [
        json.dumps(
            {
                "UserId": f"u-{run}-{i % 3}",
                "SessionId": f"s-{run}-{i // 4}",
                "EventName": ["PageVisited", "AddedBasket", "CheckedProductReviews"][i % 3],
                "TimeStamp": (datetime(2025, 6, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat(),
                "Attributes": {"ProductId": f"p{i}", "Price": 10 + i, "Discount": 20 if i == 5 else 1},
            }
        )
        for i in range(9)
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    valid = {}
    for n, line in enumerate(lines, start=1):
        with contextlib.suppress(ValueError):
            valid[f"rp-{digest(path)}-{n}"] = UserEvent.model_validate_json(line)
    assert len(valid) == 8

    # twice before the drain stored them (the second is sent again: MongoDB keeps one per _id)...
    assert replay(cfg, "file", str(path))["sent"] == 8
    assert replay(cfg, "file", str(path))["sent"] == 8
    report = drain_user_events(cfg)
    assert (report.stored, report.duplicates) == (8, 8)
    # ...and once after, by `invoke replay SOURCE`: MongoDB holds them, nothing is sent
    task = invoke(cfg, "replay", str(path), "--json")
    assert task.returncode == 0, task.stderr
    third = json.loads(task.stdout)
    assert (third["kind"], third["sent"], third["already_stored"], sum(third["rejected"].values())) == (
        "events",
        0,
        8,
        1,
    )
    events = mongo_client(cfg.mongo)[cfg.mongo.database][cfg.batch.events_collection]
    docs = {d["_id"]: d for d in events.find({})}
    assert set(docs) == set(valid)
    for event_id, event in valid.items():
        assert (docs[event_id]["UserId"], docs[event_id]["EventName"]) == (event.UserId, event.EventName.value)


def _sample_verdicts() -> dict[str, dict[str, bool]]:
    """Each sample file: where -> valid, decided here by reading the file without replay's code."""
    out: dict[str, dict[str, bool]] = {}
    out["purchases.csv"] = {f"purchases.csv:{line}": ok for line, ok in csv_verdicts(SAMPLES / "purchases.csv").items()}
    verdicts = {}
    for n, line in enumerate((SAMPLES / "events.jsonl").read_text().splitlines(), start=1):
        try:
            UserEvent.model_validate_json(line)
            verdicts[f"events.jsonl:{n}"] = True
        except ValueError:
            verdicts[f"events.jsonl:{n}"] = False
    out["events.jsonl"] = verdicts
    verdicts = {}
    for n, row in enumerate(pq.read_table(SAMPLES / "purchases.parquet").to_pylist(), start=1):
        row.pop("EventId")
        try:
            Purchase.model_validate(row)
            verdicts[f"purchases.parquet:{n}"] = True
        except ValueError:
            verdicts[f"purchases.parquet:{n}"] = False
    out["purchases.parquet"] = verdicts
    return out


def test_a_dry_run_of_the_samples_lists_the_rejected_records_and_sends_nothing(cfg, tmp_path):
    before = {t: end_offsets(cfg, t) for t in cfg.kafka.topics}
    samples = _sample_verdicts()
    for name, verdicts in samples.items():
        assert True in verdicts.values() and False in verdicts.values(), name  # the samples show both
        summary = replay(cfg, "file", str(SAMPLES / name), "--dry-run")
        assert summary["dry_run"] and summary["sent"] == 0
        assert summary["read"] == len(verdicts)
        assert summary["would_send"] == sum(verdicts.values())
        assert sorted(r["where"] for r in summary["rejects"]) == sorted(w for w, ok in verdicts.items() if not ok)
        assert all(r["reason"].startswith(("breaks the contract: ", "invalid JSON: ")) for r in summary["rejects"])
    # a lake export in a local folder: its committed files are every Parquet file there
    folder = tmp_path / "old-lake" / "date=2026-03-01"
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes((SAMPLES / "purchases.parquet").read_bytes())
    summary = replay(cfg, "lake", "--path", str(tmp_path / "old-lake"), "--dry-run")
    verdicts = {w.replace("purchases.parquet", "part-0.parquet"): ok for w, ok in samples["purchases.parquet"].items()}
    assert (summary["read"], summary["would_send"]) == (len(verdicts), sum(verdicts.values()))
    assert sorted(r["where"] for r in summary["rejects"]) == sorted(w for w, ok in verdicts.items() if not ok)
    assert {t: end_offsets(cfg, t) for t in cfg.kafka.topics} == before


def _event_record(event_id: str, discount: float) -> dict:
    return {
        "UserId": f"u-{event_id}",
        "SessionId": "s1",
        "EventName": "AddedBasket",
        "TimeStamp": "2025-06-01T10:00:00+00:00",
        "Attributes": {"ProductId": "p1", "Price": 10.0, "Discount": discount},
        "EventId": event_id,
        "IngestedAt": "2025-06-01T10:00:01+00:00",
        "ClientIp": "81.2.69.0",
        "UserAgent": "Mozilla/5.0",
    }


def produce(cfg: Settings, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka.bootstrap_servers, acks="all")
    for v in values:
        producer.send(topic, key=b"k", value=v)
    producer.flush()
    producer.close()


def test_a_dead_letter_fixed_is_replayed_once_and_marked(cfg):
    event_id = f"ev-{uuid.uuid4().hex[:10]}"
    produce(cfg, cfg.kafka.user_events_topic, [json.dumps(_event_record(event_id, 99.0)).encode(), b'{"UserId": oops'])
    assert drain_user_events(cfg).dead_lettered == 2
    db = mongo_client(cfg.mongo)[cfg.mongo.database]
    letters = db[cfg.batch.dead_letter_collection]
    reasons = {d["_id"]: d["Reason"] for d in letters.find({})}

    dry = replay(cfg, "dead-letters", "--dry-run")
    assert (dry["read"], dry["would_send"], sum(dry["rejected"].values())) == (2, 0, 2)
    task = invoke(cfg, "replay", "--dead-letters", "--dry-run", "--json")  # as the issue spells it
    assert task.returncode == 0 and json.loads(task.stdout) == {**dry, "seconds": json.loads(task.stdout)["seconds"]}

    # the data fix: the stored record's discount made what it should have been
    fixed = letters.find_one({"Value": {"$ne": b'{"UserId": oops'}})
    letters.update_one({"_id": fixed["_id"]}, {"$set": {"Value": json.dumps(_event_record(event_id, 1.5)).encode()}})

    only_json = replay(cfg, "dead-letters", "--reason", "INVALID JSON", "--dry-run")
    assert (only_json["read"], only_json["would_send"]) == (1, 0)

    first = replay(cfg, "dead-letters")
    assert (first["read"], first["sent"], first["already_replayed"], sum(first["rejected"].values())) == (2, 1, 0, 1)
    marked = letters.find_one({"_id": fixed["_id"]})
    assert marked["ReplayedAs"] == event_id and marked["ReplayedAt"] is not None
    other = letters.find_one({"_id": {"$ne": fixed["_id"]}})
    assert "ReplayedAt" not in other and other["Reason"] == reasons[other["_id"]]  # stays, with its reason

    second = replay(cfg, "dead-letters")
    assert (second["read"], second["sent"], second["already_replayed"]) == (1, 0, 1)

    assert drain_user_events(cfg).stored == 1
    (stored,) = db[cfg.batch.events_collection].find({})
    assert (stored["_id"], stored["Attributes"]["Discount"].to_decimal()) == (event_id, Decimal("1.5"))
    assert stored["ClientIp"] == "81.2.69.0" and stored["UserAgent"] == "Mozilla/5.0"  # the original sender


def test_a_quarantined_purchase_fixed_is_replayed_once_and_marked(cfg, spark):
    event_id = f"pq-{uuid.uuid4().hex[:10]}"
    record = {
        "SessionId": "s1",
        "TimeStamp": "2025-06-01T10:00:00+00:00",
        "UserId": "u1",
        "TotalPrice": 99.0,  # the line costs 2 x 10.00
        "OrderId": f"o-{event_id}",
        "Products": [{"ProductId": "p1", "ItemCount": 2, "ItemPrice": 10.0, "ItemDiscount": 0.0}],
        "PaymentType": "PayPal",
        "EventId": event_id,
        "IngestedAt": "2025-06-01T10:00:01+00:00",
    }
    produce(cfg, cfg.kafka.purchases_topic, [json.dumps(record).encode(), b"not json"])
    run_until_caught_up(spark, cfg)
    assert len(lake_rows(cfg, cfg.streaming.quarantine_path, ["KafkaOffset"])) == 2

    # the data fix, in the lake's quarantine file itself
    client = s3_client(cfg.s3)
    st = cfg.streaming.model_copy(update={"output_path": cfg.streaming.quarantine_path})
    (key,) = LakeFiles(client, cfg.model_copy(update={"streaming": st})).committed()
    table = pq.read_table(io.BytesIO(client.get_object(cfg.s3.bucket, key).read()))
    values = [
        json.dumps({**record, "TotalPrice": 20.0}).encode() if v != b"not json" else v
        for v in table["Value"].to_pylist()
    ]
    table = table.set_column(table.schema.get_field_index("Value"), "Value", pa.array(values, pa.binary()))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    client.put_object(cfg.s3.bucket, key, io.BytesIO(buffer.getvalue()), len(buffer.getvalue()))

    first = replay(cfg, "quarantine")
    assert (first["read"], first["sent"], sum(first["rejected"].values())) == (2, 1, 1)
    marks = mongo_client(cfg.mongo)[cfg.mongo.database][QUARANTINE_REPLAYS_COLLECTION]
    (mark,) = marks.find({})
    fixed_row = next(r for r in table.to_pylist() if r["Value"] != b"not json")
    assert mark["_id"] == f"{fixed_row['KafkaTopic']}/{fixed_row['KafkaPartition']}/{fixed_row['KafkaOffset']}"
    assert mark["ReplayedAs"] == event_id

    second = replay(cfg, "quarantine")
    assert (second["read"], second["sent"], second["already_replayed"]) == (1, 0, 1)

    run_until_caught_up(spark, cfg)
    stored = lake_rows(cfg, cfg.streaming.output_path, ["EventId", "TotalPrice"])
    assert stored == [{"EventId": event_id, "TotalPrice": Decimal("20.00")}]
