"""Write keys: the key file, the CLI, the stack's own keys, and the API that checks them.

The API tests run the real API (uvicorn) on the session's broker with a key file of their own;
what it published is read back from Kafka. A key must never show in a log or a metric: the
API and the generator run as processes there, their whole output read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from conftest import ServerThread, end_offsets, read_from
from shopstream.settings import ApiSettings, Settings
from shopstream.write_keys import (
    DEFAULT_RATE_PER_S,
    PREFIX,
    WriteKeyError,
    create_key,
    read_client_key,
    read_keys,
    revoke_key,
)
from shopstream.write_keys.__main__ import app as keys_cli
from shopstream_api.auth import TokenBucket
from shopstream_api.examples import PURCHASE_EXAMPLE, USER_EVENT_EXAMPLE
from shopstream_api.main import create_app
from shopstream_stack.apps import DashboardService, GeneratorService
from shopstream_stack.keys import CLIENT_KEY_ENV, client_key_env, ensure_stack_keys, key_path


def event() -> dict:
    return {**USER_EVENT_EXAMPLE, "UserId": f"user-{uuid.uuid4().hex[:8]}"}


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the key file --------------------------------------------------------------------------
def test_the_key_file_keeps_names_and_hashes_never_a_key(tmp_path):
    path = tmp_path / "api" / "write-keys.json"
    shop = create_key(path, "shop")
    slow = create_key(path, "slow", rate_per_s=5, burst=2)
    assert shop.startswith(PREFIX) and slow.startswith(PREFIX) and shop != slow
    assert len(shop) - len(PREFIX) >= 43  # 32 random bytes, base64url
    text = path.read_text()
    assert shop not in text and slow not in text
    keys = {k.name: k for k in read_keys(path)}
    assert {n: k.sha256 for n, k in keys.items()} == {"shop": sha256(shop), "slow": sha256(slow)}
    assert (keys["shop"].rate_per_s, keys["shop"].capacity) == (DEFAULT_RATE_PER_S, DEFAULT_RATE_PER_S)
    assert (keys["slow"].rate_per_s, keys["slow"].capacity) == (5, 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["write-keys.json", "write-keys.json.lock"]  # no temp left

    with pytest.raises(WriteKeyError):
        create_key(path, "shop")  # one live key per name
    with pytest.raises(ValueError):
        create_key(path, "no spaces")
    revoked = revoke_key(path, "shop")
    assert revoked.revoked is not None and revoked.sha256 == sha256(shop)
    with pytest.raises(WriteKeyError):
        revoke_key(path, "shop")  # nothing live left to revoke
    again = create_key(path, "shop")  # a new key for the name; the old one stays, revoked
    entries = [(k.name, k.sha256, k.revoked is None) for k in read_keys(path)]
    assert entries == [("shop", sha256(shop), False), ("slow", sha256(slow), True), ("shop", sha256(again), True)]


def test_concurrent_creates_lose_no_key(tmp_path):
    path = tmp_path / "write-keys.json"
    made: dict[str, str] = {}

    def make(i: int) -> None:
        made[f"k{i}"] = create_key(path, f"k{i}")

    threads = [threading.Thread(target=make, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k.name: k.sha256 for k in read_keys(path)} == {n: sha256(k) for n, k in made.items()}


def test_the_cli_prints_a_key_once_and_lists_without_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPSTREAM_RUN_DIR", str(tmp_path))
    from shopstream.settings import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        made = runner.invoke(keys_cli, ["create", "partner", "--rate", "50"])
        assert made.exit_code == 0, made.output
        key = made.stdout.strip().splitlines()[-1]
        (entry,) = read_keys(tmp_path / "api" / "write-keys.json")
        assert (entry.name, entry.sha256, entry.rate_per_s) == ("partner", sha256(key), 50)
        listed = runner.invoke(keys_cli, ["list"], env={"COLUMNS": "200"})
        assert listed.exit_code == 0 and "partner" in listed.stdout and entry.sha256[:12] in listed.stdout
        assert key not in listed.stdout and entry.sha256 not in listed.stdout
        assert runner.invoke(keys_cli, ["create", "partner"]).exit_code == 1
        assert runner.invoke(keys_cli, ["revoke", "partner"]).exit_code == 0
        assert read_keys(tmp_path / "api" / "write-keys.json")[0].revoked is not None
        assert runner.invoke(keys_cli, ["revoke", "partner"]).exit_code == 1
    finally:
        get_settings.cache_clear()


def test_the_stack_makes_its_keys_once_each_readable_by_its_owner_only(tmp_path):
    settings = Settings(_env_file=None, run_dir=tmp_path)
    assert client_key_env(settings, "replay") == {}
    assert ensure_stack_keys(settings) == ["generator", "replay"]
    assert ensure_stack_keys(settings) == []  # kept: still live, still held
    live = {k.name: k.sha256 for k in read_keys(settings.write_keys_file) if k.revoked is None}
    for name in ("generator", "replay"):
        path = key_path(settings, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        held = read_client_key(path)
        assert held is not None and sha256(held.get_secret_value()) == live[name]
    assert stat.S_IMODE(settings.client_keys_dir.stat().st_mode) == 0o700
    replay = read_client_key(key_path(settings, "replay"))
    assert replay is not None and client_key_env(settings, "replay") == {CLIENT_KEY_ENV: replay.get_secret_value()}

    # what the supervisor runs: the generator with its own key, the dashboard (its replay button) with replay's
    generator = read_client_key(key_path(settings, "generator"))
    assert generator is not None
    assert GeneratorService(settings).procs()[0].env[CLIENT_KEY_ENV] == generator.get_secret_value()
    assert DashboardService(settings).procs()[0].env[CLIENT_KEY_ENV] == replay.get_secret_value()

    revoke_key(settings.write_keys_file, "generator")  # revoked: the next `up` makes a new one
    assert ensure_stack_keys(settings) == ["generator"]
    held = read_client_key(key_path(settings, "generator"))
    assert held is not None
    assert [k.revoked is None for k in read_keys(settings.write_keys_file) if k.name == "generator"] == [False, True]
    assert sha256(held.get_secret_value()) == read_keys(settings.write_keys_file)[-1].sha256


# -- when keys are required -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "required"),
    [
        ("127.0.0.1", False),
        ("127.0.0.53", False),
        ("localhost", False),
        ("::1", False),
        ("[::1]", False),
        ("0.0.0.0", True),
        ("::", True),
        ("10.1.2.3", True),
        ("shop.example.com", True),
    ],
)
def test_keys_are_required_by_default_where_the_api_listens_beyond_loopback(host, required):
    assert ApiSettings(host=host).keys_required is required
    assert ApiSettings(host=host, require_keys=True).keys_required is True
    assert ApiSettings(host=host, require_keys=False).keys_required is False


def test_the_settings_read_keys_from_the_environment_and_never_show_the_client_key(monkeypatch, tmp_path):
    monkeypatch.setenv("SHOPSTREAM_API__HOST", "0.0.0.0")
    monkeypatch.setenv("SHOPSTREAM_API__CLIENT_KEY", "sswk_secret-value")
    monkeypatch.setenv("SHOPSTREAM_RUN_DIR", str(tmp_path))
    settings = Settings(_env_file=None)
    assert settings.api.keys_required
    assert settings.write_keys_file == tmp_path / "api" / "write-keys.json"
    assert settings.api.client_key is not None and settings.api.client_key.get_secret_value() == "sswk_secret-value"
    assert "sswk_secret-value" not in repr(settings) and "sswk_secret-value" not in str(settings.api)
    assert settings.to_env()["SHOPSTREAM_API__CLIENT_KEY"] == "sswk_secret-value"  # handed to a child as set


def test_a_token_bucket_allows_its_burst_then_its_rate():
    bucket = TokenBucket(rate=4.0, capacity=2.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(1 / 4)  # one token comes in a quarter second
    assert bucket.take(100.125) == pytest.approx(1 / 8)
    assert bucket.take(100.25) == 0.0
    assert bucket.take(110.0) == 0.0 and bucket.take(110.0) == 0.0  # refilled to its capacity, not beyond
    assert bucket.take(110.0) > 0


# -- the API --------------------------------------------------------------------------------
@contextmanager
def keyed_api(settings: Settings, folder: Path, **api) -> Iterator[tuple[ServerThread, Settings]]:
    """The API on the session's broker, with a key file of its own, one worker, keys required."""
    over = {"keys_file": folder / "write-keys.json", "workers": 1, "require_keys": True, **api}
    cfg = settings.model_copy(update={"api": settings.api.model_copy(update=over), "run_dir": folder / "run"})
    with ServerThread(create_app(cfg)) as server:
        yield server, cfg


def rejected(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        s.labels["reason"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "shopstream_rejected_requests_total"
    }


def published(settings: Settings, topic: str, since: dict[int, int], user_ids: set[str]) -> dict[str, dict]:
    """UserId -> the record published for it since `since`."""
    out = {}
    for m in read_from(settings, topic, since):
        value = json.loads(m.value)
        if value["UserId"] in user_ids:
            assert value["UserId"] not in out, "published once"
            out[value["UserId"]] = value
    return out


@pytest.mark.services
def test_requests_without_a_live_key_are_refused_before_publishing(stack, settings, tmp_path):
    topic = settings.kafka.user_events_topic
    with keyed_api(settings, tmp_path) as (api, cfg):
        key = create_key(cfg.write_keys_file, "shop")
        url = f"{api.url}/SendEvent"
        before, counted = end_offsets(settings, topic), rejected(api.url)
        refused = {
            "none": httpx.put(url, json=(e1 := event())),
            "unknown": httpx.put(url, json=(e2 := event()), headers=bearer(PREFIX + "not-a-key")),
            "basic": httpx.put(url, json=(e3 := event()), headers={"Authorization": f"Basic {key}"}),
            "purchases": httpx.post(f"{api.url}/PurchasedItems", json=[PURCHASE_EXAMPLE]),
            # refused before the body is read: not the 415 it would otherwise get
            "not json": httpx.put(url, content=b"x", headers={"Content-Type": "text/plain"}),
        }
        for what, r in refused.items():
            assert r.status_code == 401, (what, r.text)
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), what
            assert key not in r.text
        ok = httpx.put(url, json=(e4 := event()), headers=bearer(key))
        assert ok.status_code == 200, ok.text
        grown = {k: v - counted.get(k, 0) for k, v in rejected(api.url).items()}
        assert (grown["missing_key"], grown["unknown_key"]) == (3, 2)
        assert key not in httpx.get(f"{api.url}/metrics").text
    found = published(settings, topic, before, {e["UserId"] for e in (e1, e2, e3, e4)})
    assert list(found) == [e4["UserId"]]  # only the accepted one went out
    assert found[e4["UserId"]]["Source"] == "shop"
    assert found[e4["UserId"]]["EventId"] == ok.json()["EventId"]


@pytest.mark.services
def test_records_carry_the_name_of_their_key_and_null_without_one(stack, settings, tmp_path):
    """Keys not required (loopback): a request without one is published with Source null; one
    with a key is checked all the same and named by it."""
    events, purchases = settings.kafka.user_events_topic, settings.kafka.purchases_topic
    with keyed_api(settings, tmp_path, require_keys=None) as (api, cfg):
        assert not cfg.api.keys_required
        key = create_key(cfg.write_keys_file, "partner-7")
        before_e, before_p = end_offsets(settings, events), end_offsets(settings, purchases)
        anon, named = event(), event()
        assert httpx.put(f"{api.url}/SendEvent", json=anon).status_code == 200
        assert httpx.put(f"{api.url}/SendEvent", json=named, headers=bearer(key)).status_code == 200
        assert httpx.put(f"{api.url}/SendEvent", json=event(), headers=bearer(key + "x")).status_code == 401
        buyer = {**PURCHASE_EXAMPLE, "UserId": f"user-{uuid.uuid4().hex[:8]}"}
        r = httpx.post(f"{api.url}/PurchasedItems", json=[buyer, buyer], headers=bearer(key))
        assert r.status_code == 200, r.text
    found = published(settings, events, before_e, {anon["UserId"], named["UserId"]})
    assert (found[anon["UserId"]]["Source"], found[named["UserId"]]["Source"]) == (None, "partner-7")
    bought = [json.loads(m.value) for m in read_from(settings, purchases, before_p)]
    assert [p["Source"] for p in bought if p["UserId"] == buyer["UserId"]] == ["partner-7", "partner-7"]


@pytest.mark.services
def test_a_revoked_key_gets_403_within_seconds_without_a_restart(stack, settings, tmp_path):
    with keyed_api(settings, tmp_path) as (api, cfg):
        key = create_key(cfg.write_keys_file, "leaked")
        url = f"{api.url}/SendEvent"
        assert httpx.put(url, json=event(), headers=bearer(key)).status_code == 200
        counted = rejected(api.url).get("revoked_key", 0)
        revoke_key(cfg.write_keys_file, "leaked")
        statuses = []
        deadline = time.monotonic() + 60  # about a second; a generous bound for a busy machine
        while not statuses or statuses[-1] != 403:
            assert time.monotonic() < deadline, f"still not refused: {statuses[-5:]}"
            statuses.append(httpx.put(url, json=event(), headers=bearer(key)).status_code)
            time.sleep(0.05)
        assert set(statuses[:-1]) <= {200}  # accepted until the file was read again, then refused
        r = httpx.put(url, json=event(), headers=bearer(key))
        assert r.status_code == 403 and "leaked" in r.text and key not in r.text
        assert rejected(api.url)["revoked_key"] - counted == 2
        fresh = create_key(cfg.write_keys_file, "leaked")  # a new key for the name: the old stays refused
        deadline = time.monotonic() + 60
        while httpx.put(url, json=event(), headers=bearer(fresh)).status_code != 200:
            assert time.monotonic() < deadline, "the new key was never accepted"
            time.sleep(0.05)
        assert httpx.put(url, json=event(), headers=bearer(key)).status_code == 403


@pytest.mark.services
def test_a_key_over_its_rate_gets_429_with_retry_after(stack, settings, tmp_path):
    rate = 0.01  # one request per 100 s, a burst of one
    with keyed_api(settings, tmp_path) as (api, cfg):
        slow = create_key(cfg.write_keys_file, "slow", rate_per_s=rate, burst=1)
        other = create_key(cfg.write_keys_file, "other")
        url = f"{api.url}/SendEvent"
        counted = rejected(api.url).get("rate_limited", 0)
        t0 = time.monotonic()
        assert httpx.put(url, json=event(), headers=bearer(slow)).status_code == 200
        r = httpx.put(url, json=event(), headers=bearer(slow))
        elapsed = time.monotonic() - t0
        assert r.status_code == 429, r.text
        # the bucket refills at `rate`: the next token is 1/rate after the first was taken, less what passed
        assert math.ceil(1 / rate - elapsed) <= int(r.headers["Retry-After"]) <= math.ceil(1 / rate)
        assert "slow" in r.text and slow not in r.text
        r = httpx.post(f"{api.url}/PurchasedItems", json=[PURCHASE_EXAMPLE], headers=bearer(slow))
        assert r.status_code == 429  # one bucket per key, whatever the route
        assert httpx.put(url, json=event(), headers=bearer(other)).status_code == 200  # each key its own bucket
        assert rejected(api.url)["rate_limited"] - counted == 2


@pytest.mark.services
def test_each_worker_takes_its_share_of_a_keys_rate(stack, settings, tmp_path):
    """With N workers, each one's bucket holds burst/N (and fills at rate/N): their sum is the key's."""
    with keyed_api(settings, tmp_path, workers=4) as (api, cfg):
        key = create_key(cfg.write_keys_file, "shared", rate_per_s=0.01, burst=8)
        codes = [httpx.put(f"{api.url}/SendEvent", json=event(), headers=bearer(key)).status_code for _ in range(4)]
    assert codes == [200, 200, 429, 429]  # 8 / 4 workers = 2 in this one


# -- the generator against a rate-limited key -----------------------------------------------
@pytest.mark.services
def test_the_generator_waits_out_429s_and_delivers_every_record(stack, settings, tmp_path):
    from pydantic import SecretStr

    from shopstream_generator.catalogue import build_world, seeded_faker
    from shopstream_generator.cohort import build_cohort
    from shopstream_generator.sender import Sender

    world = build_world(31, 40, 20)
    cohort = build_cohort(world, seeded_faker("keys"), datetime.now(UTC), 8)
    records = len(cohort.events) + len(cohort.purchases)
    with keyed_api(settings, tmp_path) as (api, cfg):
        key = create_key(cfg.write_keys_file, "throttled", rate_per_s=10, burst=5)
        before = {t: end_offsets(settings, t) for t in settings.kafka.topics}

        async def go():
            async with Sender(api.url, concurrency=4, client_key=SecretStr(key)) as sender:
                return await sender.send(cohort)

        report = asyncio.run(go())
        limited = rejected(api.url).get("rate_limited", 0)
    total = report.total
    assert (total.sent, total.accepted, total.rejected, total.failed) == (records, records, 0, 0), report.errors
    assert total.retried > 0 and limited >= total.retried  # it was held back, and waited each time
    sent = set(report.event_ids)
    assert len(sent) == records
    found = {}
    for topic in settings.kafka.topics:
        for m in read_from(settings, topic, before[topic]):
            value = json.loads(m.value)
            if value["EventId"] in sent:
                found[value["EventId"]] = value["Source"]
    assert found == dict.fromkeys(sent, "throttled")


# -- no key in a log or a metric ------------------------------------------------------------
@pytest.mark.services
def test_no_key_shows_in_the_logs_or_metrics_of_the_api_and_the_generator(stack, settings, tmp_path):
    """The API as the stack runs it (uvicorn, here at debug level with its access log) and the
    generator's CLI with its key in SHOPSTREAM_API__CLIENT_KEY: accepted, unknown, revoked and
    rate-limited keys go through; neither output nor /metrics holds any of them."""
    from shopstream_stack.isolated import free_port

    port = free_port()
    api = settings.api.model_copy(
        update={"port": port, "workers": 1, "require_keys": True, "keys_file": tmp_path / "write-keys.json"}
    )
    cfg = settings.model_copy(update={"api": api, "run_dir": tmp_path / "run"})
    gen_key = create_key(cfg.write_keys_file, "generator")
    slow = create_key(cfg.write_keys_file, "slow", rate_per_s=0.01, burst=1)
    gone = create_key(cfg.write_keys_file, "gone")
    revoke_key(cfg.write_keys_file, "gone")
    unknown = PREFIX + "x" * 43
    env = {**os.environ, **cfg.to_env()}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    bin_dir = Path(sys.executable).parent
    log = tmp_path / "api.log"
    argv = [str(bin_dir / "uvicorn"), "--factory", "shopstream_api.main:create_app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "debug"]
    with open(log, "wb") as out:
        server = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if httpx.get(f"{api.base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        url = f"{api.base_url}/SendEvent"
        codes = [httpx.put(url, json=event(), headers=bearer(k)).status_code for k in (slow, slow, gone, unknown)]
        assert codes == [200, 429, 403, 401]
        generated = subprocess.run(
            [str(bin_dir / "shopstream-generate"), "--cohorts", "1", "--no-dimensions", "--api-url", api.base_url],
            env={**env, CLIENT_KEY_ENV: gen_key, "TERM": "dumb"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr  # every record accepted
        metrics = httpx.get(f"{api.base_url}/metrics").text
    finally:
        server.terminate()
        server.wait(60)
    output = log.read_text() + generated.stdout + generated.stderr + metrics
    assert "PUT /SendEvent" in log.read_text()  # the access log was on
    for key in (gen_key, slow, gone, unknown):
        assert key not in output
        assert key[len(PREFIX) :][:16] not in output  # nor a piece of one
    assert all(reason in metrics for reason in ("rate_limited", "revoked_key", "unknown_key"))


# -- older lake files, without the column ----------------------------------------------------
@pytest.mark.services
def test_the_lake_reads_files_from_before_source_beside_files_with_it(stack, settings):
    """A Parquet file the streaming job wrote before `Source` (and before ClientIp, UserAgent)
    and one written after read together as the dashboard and the sessions read the lake."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from shopstream.adapters.lake import LakeFiles
    from shopstream.adapters.s3 import ensure_bucket, s3_client
    from shopstream.contracts import PurchaseRecord
    from shopstream_streaming.job import RECORD_ARROW

    prefix = f"raw/keys-{uuid.uuid4().hex[:8]}"
    cfg = settings.model_copy(update={"streaming": settings.streaming.model_copy(update={"output_path": prefix})})
    ensure_bucket(cfg.s3)
    client = s3_client(cfg.s3)
    schema = pa.schema(list(RECORD_ARROW))
    assert schema.names[-3:] == ["ClientIp", "UserAgent", "Source"]  # derived from the contract

    def rows(source: str | None, n: int) -> list[dict]:
        base = {**PURCHASE_EXAMPLE, "IngestedAt": "2026-12-01T10:00:00Z", "Source": source}
        return [PurchaseRecord.model_validate({**base, "EventId": f"{source}-{i}"}).model_dump() for i in range(n)]

    new = pa.Table.from_pylist(rows("partner", 2), schema=schema)
    old = pa.Table.from_pylist(rows(None, 3), schema=schema).drop_columns(["ClientIp", "UserAgent", "Source"])
    for name, table in (("old", old), ("new", new)):
        out = io.BytesIO()
        pq.write_table(table, out)
        client.put_object(cfg.s3.bucket, f"{prefix}/part-{name}.parquet", io.BytesIO(out.getvalue()), out.tell())
    files = LakeFiles(client, cfg)
    read = files.read(sorted(files.committed()))
    assert read is not None
    assert sorted(read.column("EventId").to_pylist()) == sorted(
        [*old.column("EventId").to_pylist(), *new.column("EventId").to_pylist()]
    )


@pytest.mark.services
def test_the_events_validator_takes_events_with_a_source_and_without_one(stack, settings):
    """The drain stores what the API publishes now (Source set or null) beside events stored
    before Source existed; MongoDB's validator, derived from the contract, takes them all."""
    from pymongo.errors import WriteError

    from shopstream.adapters.mongo import mongo_client
    from shopstream.contracts import UserEventRecord
    from shopstream_batch.store import ensure_collections, event_document

    client = mongo_client(settings.mongo)
    database = client[f"keys_{uuid.uuid4().hex[:8]}"]
    try:
        events = ensure_collections(database, settings.batch).events

        def doc(source: str | None, i: int) -> dict:
            record = UserEventRecord.model_validate(
                {**USER_EVENT_EXAMPLE, "EventId": f"e-{i}", "IngestedAt": datetime.now(UTC), "Source": source}
            )
            return event_document(record, 0, i)

        old = doc(None, 3)
        del old["Source"], old["ClientIp"], old["UserAgent"]  # as stored before the envelope had them
        for d in (doc("partner", 1), doc(None, 2), old):
            events.insert_one(d)  # validated: no bypass
        assert {d["_id"]: d.get("Source") for d in events.find()} == {"e-1": "partner", "e-2": None, "e-3": None}
        with pytest.raises(WriteError):
            events.insert_one({**doc("partner", 4), "Source": "x" * 65})  # longer than a key's name can be
    finally:
        client.drop_database(database.name)
        client.close()
