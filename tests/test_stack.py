"""The embedded stack: every server starts, does real work, survives a restart."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from minio.error import S3Error
from pydantic import SecretStr
from sqlalchemy import text

from conftest import invoke_status, make_settings
from shopstream.adapters.kafka import admin_client
from shopstream.adapters.mongo import database, mongo_client
from shopstream.adapters.postgres import pg_engine
from shopstream.adapters.s3 import ensure_bucket, s3_client, s3_health
from shopstream.settings import EmbeddedSettings, Settings
from shopstream_stack.isolated import CLAIMS, LOWEST_PORT, ephemeral_low, free_ports, release_ports
from shopstream_stack.process import PortInUse, StackError
from shopstream_stack.s3 import PORT_FLAGS
from shopstream_stack.stack import SERVICE_TYPES

pytestmark = pytest.mark.services


def test_every_service_is_healthy_and_start_is_idempotent(stack):
    for svc in stack.values():
        assert svc.status().state == "healthy", svc.name
        assert svc.start().startswith("already running")


def test_topics_exist_with_configured_partitions(stack, settings):
    admin = admin_client(settings.kafka)
    try:
        described = {d["name"]: d for d in admin.describe_topics(settings.kafka.topics)}
    finally:
        admin.close()
    assert set(described) == {"UserEvents", "PurchasedItem"}
    for d in described.values():
        assert len(d["partitions"]) == settings.kafka.partitions == 6


def _produce(settings, topic: str, n: int, tag: str) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for i in range(n):
        producer.send(topic, key=f"user-{i % 7}".encode(), value=f"{tag}-{i}".encode())
    producer.flush(timeout=30)
    producer.close()


def _consume(settings, topic: str, group: str, expect: int) -> list[bytes]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=8000,
    )
    values = []
    for msg in consumer:
        values.append(msg.value)
        if len(values) >= expect:
            break
    consumer.commit()
    consumer.close()
    return values


@pytest.mark.parametrize("topic", ["UserEvents", "PurchasedItem"])
def test_kafka_round_trip_through_consumer_group_with_commits(stack, settings, topic):
    tag, group = uuid.uuid4().hex, f"g-{uuid.uuid4().hex}"
    _produce(settings, topic, 30, tag)
    got = [v for v in _consume(settings, topic, group, expect=10**9) if v.startswith(tag.encode())]
    assert sorted(got) == sorted(f"{tag}-{i}".encode() for i in range(30))
    # the group's committed offsets are at the end: a new member of the group reads nothing
    _produce(settings, topic, 1, tag + "-after")
    again = _consume(settings, topic, group, expect=1)
    assert again == [f"{tag}-after-0".encode()]


def test_mongo_insert_find_upsert(stack, settings):
    client = mongo_client(settings.mongo)
    coll = database(client, settings.mongo)[f"t_{uuid.uuid4().hex}"]
    coll.insert_many([{"UserId": "u1", "n": 1}, {"UserId": "u2", "n": 2}])
    assert coll.find_one({"UserId": "u2"})["n"] == 2
    coll.update_one({"UserId": "u1"}, {"$inc": {"n": 5}}, upsert=True)
    coll.update_one({"UserId": "u3"}, {"$inc": {"n": 1}}, upsert=True)
    assert {d["UserId"]: d["n"] for d in coll.find({}, {"_id": 0})} == {"u1": 6, "u2": 2, "u3": 1}
    client.close()


def test_s3_put_list_get_with_minio_client(stack, settings):
    client = s3_client(settings.s3)
    assert client.bucket_exists(settings.s3.bucket)
    key = f"tests/{uuid.uuid4().hex}.txt"
    body = b"hello lake " * 1000
    client.put_object(settings.s3.bucket, key, io.BytesIO(body), len(body))
    listed = [o.object_name for o in client.list_objects(settings.s3.bucket, prefix="tests/")]
    assert key in listed
    assert client.get_object(settings.s3.bucket, key).read() == body


def test_s3_buckets_are_created_once_and_a_new_bucket_takes_writes(stack, settings):
    """The start's bucket creation is idempotent; a bucket made later gets volumes of its own."""
    assert stack["s3"].prepare().startswith(f"bucket {settings.s3.bucket};")  # already there: not created again
    other = settings.s3.model_copy(update={"bucket": f"t-{uuid.uuid4().hex[:12]}"})
    assert ensure_bucket(other) is True
    assert ensure_bucket(other) is False
    client = s3_client(other)
    client.put_object(other.bucket, "k", io.BytesIO(b"v"), 1)
    assert client.get_object(other.bucket, "k").read() == b"v"


def test_s3_takes_only_the_settings_keys(stack, settings):
    assert s3_health(s3_client(settings.s3), settings.s3.bucket) == f"bucket {settings.s3.bucket}"
    wrong_secret = settings.s3.model_copy(update={"secret_key": SecretStr("not-the-secret")})
    wrong_key = settings.s3.model_copy(update={"access_key": "nobody"})
    for wrong, code in ((wrong_secret, "SignatureDoesNotMatch"), (wrong_key, "InvalidAccessKeyId")):
        with pytest.raises(S3Error):
            s3_health(s3_client(wrong), wrong.bucket)  # the health check says no
        with pytest.raises(S3Error) as err:
            s3_client(wrong).list_buckets()
        assert err.value.code == code


def _lake_objects(n: int) -> dict[str, bytes]:
    """Small objects and one of several chunks (the gateway splits large ones)."""
    tag = uuid.uuid4().hex
    objects = {f"durability/{tag}/{i}": os.urandom(100 + i * 1000) for i in range(n)}
    objects[f"durability/{tag}/large"] = os.urandom(9 * 1024 * 1024)
    return objects


def _put_all(settings, objects: dict[str, bytes]) -> None:
    client = s3_client(settings.s3)
    for key, body in objects.items():
        client.put_object(settings.s3.bucket, key, io.BytesIO(body), len(body))


def _stored(settings, objects: dict[str, bytes]) -> dict[str, bytes]:
    client = s3_client(settings.s3)
    prefix = next(iter(objects)).rsplit("/", 1)[0] + "/"
    listed = {o.object_name for o in client.list_objects(settings.s3.bucket, prefix=prefix, recursive=True)}
    return {key: client.get_object(settings.s3.bucket, key).read() for key in sorted(listed)}


def test_s3_is_one_process_and_a_stop_keeps_every_acknowledged_object(stack, settings):
    """`invoke down` sends SIGTERM and, after a short grace, SIGKILL (the filer's gRPC drain
    would wait 15 s): whatever the server had answered is there after the next start."""
    svc = stack["s3"]
    assert [p.name for p in svc.procs()] == ["server"]
    objects = _lake_objects(5)
    _put_all(settings, objects)
    log = svc.supervisor.log
    seen = log.stat().st_size
    assert svc.stop() is True
    with log.open() as f:
        f.seek(seen)
        stopping = [line for line in f if "s3-server" in line]
    assert any("stopped: s3-server" in line for line in stopping), stopping
    assert svc.status().state == "stopped"
    svc.start()
    assert _stored(settings, objects) == objects


def test_s3_objects_acknowledged_just_before_a_kill_9_are_there_after_the_supervisor_restarts_it(stack, settings):
    """SIGKILL right after the last PUT was answered: the weed process gets no chance to
    flush anything, and every object it acknowledged is back, whole, once it is healthy."""
    from test_faults import wait_for
    from test_supervision import restarted

    svc = stack["s3"]
    for _ in range(2):
        objects = _lake_objects(20)
        _put_all(settings, objects)
        pid = svc.procs()[0].pid()
        os.kill(pid, signal.SIGKILL)
        wait_for("the S3 server back in a new process", lambda pid=pid: restarted(svc, pid), 120)
        assert _stored(settings, objects) == objects


def test_postgres_sql(stack, settings):
    engine = pg_engine(settings.postgres)
    with engine.begin() as conn:
        conn.execute(text("create table if not exists t_sql (k text primary key, v int)"))
        conn.execute(text("insert into t_sql values ('a', 1), ('b', 2) on conflict do nothing"))
        total = conn.execute(text("select sum(v) from t_sql")).scalar_one()
    assert total == 3
    engine.dispose()


def test_default_and_isolated_ports_are_all_different(tmp_path, monkeypatch):
    """Every server's ports, the S3 server's internal ones included, never share a number."""
    for name in [n for n in os.environ if n.startswith("SHOPSTREAM_")]:
        monkeypatch.delenv(name)  # the defaults

    def ports(s: Settings) -> list[int]:
        found = [
            urlsplit(f"//{s.kafka.bootstrap_servers}").port,
            urlsplit(s.mongo.uri).port,
            urlsplit(s.s3.endpoint_url).port,
            s.postgres.port,
            s.api.port,
            s.dashboard.port,
            s.airflow.port,
        ]
        return found + [getattr(s.embedded, f) for f in type(s.embedded).model_fields if f.endswith("_port")]

    for s in (Settings(_env_file=None), make_settings(tmp_path / "run")):
        found = ports(s)
        assert None not in found and len(set(found)) == len(found), found
    # every port of the S3 server is set from the settings (none left to its own defaults)
    assert set(PORT_FLAGS) == {f for f in EmbeddedSettings.model_fields if f.startswith("s3_") and f.endswith("_port")}


def test_free_ports_taken_together_never_repeat():
    """A stack's ports are chosen together: one at a time, a just-closed port can come back
    (CI once gave the S3 server two equal ports)."""
    for _ in range(20):
        ports = free_ports(300)
        release_ports(ports)
        assert len(set(ports)) == len(ports)


def test_ports_chosen_by_two_processes_are_never_the_same_until_one_ends():
    """A port chosen but not bound yet is still taken: a stack binds its ports up to minutes
    after choosing them, and CI once found the chaos stack's dashboard port taken by another
    test process's S3 server. 300 ports each, out of about 4,700: by chance alone, some 19
    would be the same."""
    code = "from shopstream_stack.isolated import free_ports; print(*free_ports(300), flush=True); input()"
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdin is not None
        theirs = {int(p) for p in other.stdout.readline().split()}
        mine = free_ports(300)
        release_ports(mine)
        assert len(theirs) == 300 and theirs.isdisjoint(mine)
        other.stdin.write("\n")
        other.stdin.close()
        assert other.wait(timeout=60) == 0
    finally:
        other.kill()
    release_ports(free_ports(1))  # claims are read back, pruned of processes that have ended
    assert theirs.isdisjoint(int(p) for p in json.loads(CLAIMS.read_text()))


def test_free_ports_are_below_the_ephemeral_range():
    """A test server's port must not be one the kernel can hand to a client's connection
    (fresh-clone CI once found its API port taken by a Spark JVM started beside it)."""
    low = ephemeral_low()
    ports = free_ports(50)
    release_ports(ports)
    assert all(LOWEST_PORT <= p < low for p in ports)


def _write_marker(name, settings, marker):
    if name == "kafka":
        _produce(settings, "UserEvents", 1, marker)
    elif name == "mongo":
        client = mongo_client(settings.mongo)
        database(client, settings.mongo)["markers"].insert_one({"m": marker})
        client.close()
    elif name == "postgres":
        with pg_engine(settings.postgres).begin() as conn:
            conn.execute(text("create table if not exists markers (m text)"))
            conn.execute(text("insert into markers values (:m)"), {"m": marker})
    elif name == "s3":
        s3_client(settings.s3).put_object(settings.s3.bucket, f"markers/{marker}", io.BytesIO(b"x"), 1)


def _read_marker(name, settings, marker) -> bool:
    if name == "kafka":
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka.bootstrap_servers, auto_offset_reset="earliest", consumer_timeout_ms=5000
        )
        tps = [TopicPartition("UserEvents", p) for p in range(settings.kafka.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        found = any(m.value == f"{marker}-0".encode() for m in consumer)
        consumer.close()
        return found
    if name == "mongo":
        client = mongo_client(settings.mongo)
        found = database(client, settings.mongo)["markers"].find_one({"m": marker}) is not None
        client.close()
        return found
    if name == "postgres":
        with pg_engine(settings.postgres).connect() as conn:
            return conn.execute(text("select count(*) from markers where m = :m"), {"m": marker}).scalar_one() == 1
    if name == "s3":
        return s3_client(settings.s3).get_object(settings.s3.bucket, f"markers/{marker}").read() == b"x"
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["kafka", "mongo", "postgres", "s3"])
def test_restart_keeps_data(stack, settings, name):
    svc, marker = stack[name], uuid.uuid4().hex
    _write_marker(name, settings, marker)
    assert svc.stop() is True
    assert svc.status().state == "stopped"
    svc.start()
    assert svc.status().state == "healthy"
    assert _read_marker(name, settings, marker)


def test_kafka_committed_offsets_survive_restart(stack, settings):
    group, tag = f"g-{uuid.uuid4().hex}", uuid.uuid4().hex
    _produce(settings, "PurchasedItem", 5, tag)
    _consume(settings, "PurchasedItem", group, expect=10**9)
    stack["kafka"].stop()
    stack["kafka"].start()
    _produce(settings, "PurchasedItem", 1, tag + "-new")
    assert _consume(settings, "PurchasedItem", group, expect=1) == [f"{tag}-new-0".encode()]


@pytest.mark.parametrize("cls", SERVICE_TYPES, ids=lambda c: c.name)
def test_port_taken_names_the_port_and_its_process(tmp_path, cls):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        settings = make_settings(tmp_path / "run")
        # point the service's main port at the taken one
        overrides = {
            "kafka": {"kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"})},
            "mongo": {"mongo": settings.mongo.model_copy(update={"uri": f"mongodb://127.0.0.1:{port}/"})},
            "postgres": {"postgres": settings.postgres.model_copy(update={"port": port})},
            "s3": {"s3": settings.s3.model_copy(update={"endpoint_url": f"http://127.0.0.1:{port}"})},
        }[cls.name]
        svc = cls(make_settings(tmp_path / "run", **overrides))
        with pytest.raises(PortInUse) as err:
            svc.start()
    msg = str(err.value)
    assert f"port {port}" in msg and f"pid {os.getpid()}" in msg and "SHOPSTREAM_" in msg
    assert not svc.running()


def test_a_server_that_dies_at_start_reports_its_log(tmp_path):
    from shopstream_stack.kafka import KafkaBroker

    settings = make_settings(tmp_path / "run")
    svc = KafkaBroker(settings)
    svc.folder.mkdir(parents=True)
    svc.data_dir.write_text("a file where the broker expects its data folder")
    with pytest.raises(StackError) as err:
        svc.start()
    assert "kafka exited" in str(err.value) and "Last lines of its logs" in str(err.value)
    assert not svc.running()


def test_invoke_status_reports_every_server_healthy(stack, settings):
    code, states = invoke_status(settings, timeout=60)
    # the four servers answer; the pipeline's components are not running here, so status says so and fails
    assert {states[n]["state"] for n in ("kafka", "mongo", "postgres", "s3")} == {"healthy"}, states
    assert "stopped" in {states[n]["state"] for n in ("api", "airflow", "generator")} and code == 1
    assert all(states[n]["pids"] for n in ("kafka", "mongo", "postgres", "s3")), states
    # restarts since supervisord started: this module's kill -9 test restarts the S3 server on purpose
    assert all(states[n]["restarts"] == 0 for n in ("kafka", "mongo", "postgres")), states
