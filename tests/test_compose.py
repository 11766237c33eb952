"""Static checks of infra/compose.yaml against shopstream.settings.Settings.

Docker is not needed: the file is parsed with PyYAML and compose's variable
interpolation is applied, once with no variables set (each takes its default)
and once with a .env that overrides them, and compared with what
`Settings` reads from the same environment. Where a Compose v2 CLI is
installed, the file is also validated by `compose config`.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel, SecretStr

from shopstream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "infra" / "compose.yaml"

# One-shot services (restart: "no"); every other service runs for good.
INIT_SERVICES = {"kafka-init", "minio-init"}

# Container-side ports of the images (their defaults, not configured here).
MONGO_PORT = 27017
MINIO_S3_PORT = 9000
POSTGRES_PORT = 5432

# Names and credentials that code in a container and on the host must agree on.
SHARED_FIELDS = [
    ["kafka", "user_events_topic"],
    ["kafka", "purchases_topic"],
    ["kafka", "partitions"],
    ["kafka", "replication_factor"],
    ["mongo", "database"],
    ["s3", "access_key"],
    ["s3", "secret_key"],
    ["s3", "region"],
    ["s3", "bucket"],
    ["postgres", "user"],
    ["postgres", "password"],
    ["postgres", "database"],
]

# A .env that changes every setting the compose file can follow (not the
# host-side addresses: Kafka's advertised listener, Mongo and S3 URLs are fixed).
OVERRIDES = {
    "SHOPSTREAM_KAFKA__USER_EVENTS_TOPIC": "ue-override",
    "SHOPSTREAM_KAFKA__PURCHASES_TOPIC": "pi-override",
    "SHOPSTREAM_KAFKA__PARTITIONS": "7",
    "SHOPSTREAM_KAFKA__REPLICATION_FACTOR": "1",
    "SHOPSTREAM_MONGO__DATABASE": "db-override",
    "SHOPSTREAM_S3__ACCESS_KEY": "key-override",
    "SHOPSTREAM_S3__SECRET_KEY": "secret-override",
    "SHOPSTREAM_S3__REGION": "eu-override-1",
    "SHOPSTREAM_S3__BUCKET": "bucket-override",
    "SHOPSTREAM_POSTGRES__USER": "user-override",
    "SHOPSTREAM_POSTGRES__PASSWORD": "pw-override",
    "SHOPSTREAM_POSTGRES__DATABASE": "pgdb-override",
    "SHOPSTREAM_POSTGRES__PORT": "15432",
    "SHOPSTREAM_AIRFLOW__PORT": "18080",
}


# What compose interpolates: `$$` (a literal `$`), `${NAME...}` and bare `$NAME`.
_INTERPOLATION = re.compile(
    r"\$\$"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


# --------------------------------------------------------------------------- helpers


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of `text` with the variables `env` (nothing else is set)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("bare"):
            raise AssertionError(f"bare ${m.group('bare')} is interpolated by compose; write $${m.group('bare')}")
        name, op = m.group("name"), m.group("op")
        if op not in (":-", "-"):
            raise AssertionError(f"{m.group(0)} has no default (use ${{NAME:-default}})")
        value = env.get(name)
        return m.group("arg") if value is None or (op == ":-" and value == "") else value

    return _INTERPOLATION.sub(sub, text)


def _resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, list):
        return [_resolve(v, env) for v in node]
    if isinstance(node, dict):
        return {k: _resolve(v, env) for k, v in node.items()}
    return node


def _variables(text: str) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, default) of every `${...}` reference in the raw file."""
    return [(m.group("name"), m.group("op"), m.group("arg")) for m in _INTERPOLATION.finditer(text) if m.group("name")]


def _clean_settings(env: dict[str, str] | None = None) -> Settings:
    """Settings from `env` alone: no SHOPSTREAM_* from the caller's environment, no .env file."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.upper().startswith("SHOPSTREAM_"):
                mp.delenv(key)
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        return Settings(_env_file=None)


def _field_path(var: str) -> list[str] | None:
    """SHOPSTREAM_<FIELD> or SHOPSTREAM_<GROUP>__<FIELD> -> attribute path, or None if no such field."""
    if not var.startswith("SHOPSTREAM_"):
        return None
    path = var.removeprefix("SHOPSTREAM_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        is_group = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        last = i == len(path) - 1
        if is_group == last:  # a group must be followed by a field, a field must end the path
            return None
        if is_group:
            model = annotation
    return path


def _value_at(settings: Settings, path: list[str]) -> Any:
    value: Any = settings
    for part in path:
        value = getattr(value, part)
    return value


def _as_env_text(value: Any) -> str:
    """A settings value as it is written in an environment variable."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _ports(service: dict) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) of every published port, short or long syntax."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "")), int(entry["published"]), int(entry["target"])))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        assert len(parts) >= 2, f"port {entry!r} is not published on a fixed host port"
        assert "-" not in spec, f"port ranges are not expected: {entry!r}"
        host_ip = parts[0] if len(parts) == 3 else ""
        out.append((host_ip, int(parts[-2]), int(parts[-1])))
    return out


def _target_of(service: dict, published: int) -> int:
    targets = [t for _, p, t in _ports(service) if p == published]
    assert targets, f"host port {published} is not published (ports: {service.get('ports')})"
    return targets[0]


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.strip().rpartition(":")
    return host, int(port)


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, rest = item.strip().partition("://")
        out[name] = _host_port(rest)
    return out


def _command_text(service: dict) -> str:
    command = service.get("command") or ""
    return "\n".join(command) if isinstance(command, list) else command


def _image_tag(image: str) -> str | None:
    image = image.split("@", 1)[0]
    name_end = image.rfind("/")
    colon = image.rfind(":")
    return image[colon + 1 :] if colon > name_end else None


def _depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short syntax means service_started
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(raw_text: str) -> dict:
    """The file as compose runs it with no variables set."""
    return _resolve(yaml.safe_load(raw_text), {})


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


@pytest.fixture(scope="module")
def defaults() -> Settings:
    return _clean_settings()


@pytest.fixture(scope="module", params=["defaults", "env-overrides"])
def scenario(request: pytest.FixtureRequest, raw_text: str) -> tuple[dict[str, dict], Settings]:
    """(services, settings) as compose and Settings see the same environment."""
    env = {} if request.param == "defaults" else OVERRIDES
    return _resolve(yaml.safe_load(raw_text), env)["services"], _clean_settings(env)


# --------------------------------------------------------------------------- structure


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict]) -> None:
    assert services.keys() >= INIT_SERVICES, f"init services missing: {INIT_SERVICES - services.keys()}"
    for name, service in services.items():
        one_shot = str(service.get("restart", "no")) == "no"
        assert one_shot == (name in INIT_SERVICES), (
            f"{name}: only {sorted(INIT_SERVICES)} may be one-shot (restart: 'no'); "
            "long-running services need a restart policy"
        )
        if one_shot:
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        test = check.get("test")
        assert test and test not in (["NONE"], "NONE"), f"{name}: no healthcheck"


def test_init_services_wait_for_healthy_servers(services: dict[str, dict]) -> None:
    for name in INIT_SERVICES:
        deps = _depends_on(services[name])
        assert deps, f"{name} depends on nothing"
        for dep, condition in deps.items():
            assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
            assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"


def test_dependencies_wait_for_health_or_completion(services: dict[str, dict]) -> None:
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            expected = "service_completed_successfully" if dep in INIT_SERVICES else "service_healthy"
            assert condition == expected, f"{name} -> {dep}: {condition}, expected {expected}"


def test_init_services_are_adopted_by_long_running_services(services: dict[str, dict]) -> None:
    """A running service waits for each init service to complete. Else `up --wait` (which
    `./shopstream up` runs) reports the init container's exit as a failure, and
    nothing orders the topics and bucket before their users."""
    for init in INIT_SERVICES:
        adopters = [
            name
            for name, service in services.items()
            if name not in INIT_SERVICES and _depends_on(service).get(init) == "service_completed_successfully"
        ]
        assert adopters, f"no long-running service waits for {init} to complete"


def test_images_are_pinned(services: dict[str, dict]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image (builds are not expected here)"
        tag = _image_tag(image)
        assert tag or "@sha256:" in image, f"{name}: {image} has no tag"
        assert tag is None or not tag.startswith("latest"), f"{name}: {image} uses a moving 'latest' tag"


def test_named_volumes_are_declared_and_used(compose: dict, services: dict[str, dict]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for mount in service.get("volumes") or []:
            source = mount.get("source", "") if isinstance(mount, dict) else str(mount).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert declared == used, f"declared but unused volumes: {declared - used}"
    for name in ("kafka", "mongo", "minio", "postgres"):
        assert any(not str(m).startswith((".", "/")) for m in services[name].get("volumes") or []), (
            f"{name} keeps its data in no named volume"
        )


# --------------------------------------------------------------------------- ports == settings


def _assert_host_side(services: dict[str, dict], name: str, port: int, settings_host: str | None) -> None:
    """The published address is one the settings' host reaches (all interfaces, or that host)."""
    for host_ip, published, _ in _ports(services[name]):
        if published == port:
            assert host_ip in ("", "0.0.0.0", settings_host), (
                f"{name} is published on {host_ip}:{port}, settings connect to {settings_host}"
            )


def test_kafka_port_and_listener_match_bootstrap_servers(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    kafka = services["kafka"]
    env = _environment(kafka)
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = _listeners(env["KAFKA_LISTENERS"])
    for server in settings.kafka.bootstrap_servers.split(","):
        host, port = _host_port(server)
        names = [n for n, hp in advertised.items() if hp == (host, port)]
        assert names, f"no advertised listener is {server}: {advertised}"
        target = _target_of(kafka, port)
        assert bound[names[0]][1] == target, (
            f"host port {port} -> {target}, listener {names[0]} binds {bound[names[0]]}"
        )
        _assert_host_side(services, "kafka", port, host)


def test_kafka_listeners_are_consistent(services: dict[str, dict]) -> None:
    env = _environment(services["kafka"])
    bound = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert bound.keys() <= protocols.keys(), f"listeners without a protocol: {bound.keys() - protocols.keys()}"
    assert advertised.keys() <= bound.keys(), f"advertised but not bound: {advertised.keys() - bound.keys()}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    for name, (host, port) in advertised.items():
        if host in services:  # reached inside the compose network: no port mapping in between
            assert bound[name][1] == port, f"{name} advertises {host}:{port} but binds {bound[name]}"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in advertised
    for voter in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        node, _, hostport = voter.partition("@")
        assert node == str(env["KAFKA_NODE_ID"])
        assert _host_port(hostport) == ("kafka", bound[controller][1])


def test_mongo_port_matches_uri(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    url = urlsplit(settings.mongo.uri)
    port = url.port or MONGO_PORT
    assert _target_of(services["mongo"], port) == MONGO_PORT
    _assert_host_side(services, "mongo", port, url.hostname)


def test_minio_port_matches_s3_endpoint(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    url = urlsplit(settings.s3.endpoint_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    assert _target_of(services["minio"], port) == MINIO_S3_PORT
    _assert_host_side(services, "minio", port, url.hostname)


def test_postgres_port_matches_settings(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    port = settings.postgres.port
    assert _target_of(services["postgres"], port) == POSTGRES_PORT
    _assert_host_side(services, "postgres", port, settings.postgres.host)


def test_airflow_port_matches_settings(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    airflow = services["airflow"]
    port = settings.airflow.port
    api_port = int(_environment(airflow).get("AIRFLOW__API__PORT", 8080))
    assert _target_of(airflow, port) == api_port
    _assert_host_side(services, "airflow", port, settings.airflow.host)
    assert f":{api_port}/" in " ".join(airflow["healthcheck"]["test"]), "healthcheck probes another port"


def test_host_ports_are_unique(services: dict[str, dict]) -> None:
    seen: dict[int, str] = {}
    for name, service in services.items():
        for _, published, _ in _ports(service):
            assert published not in seen, f"host port {published}: {seen[published]} and {name}"
            seen[published] = name


# --------------------------------------------------------------------------- variables == settings


def test_interpolation_is_well_formed(raw_text: str) -> None:
    """No bare $NAME (compose would substitute it, usually with nothing) and no default-less ${NAME}."""
    _interpolate(raw_text, {})


def test_shopstream_variables_are_settings_fields_with_their_defaults(raw_text: str, defaults: Settings) -> None:
    refs = [(n, op, d) for n, op, d in _variables(raw_text) if n.upper().startswith("SHOPSTREAM_")]
    assert refs, "the compose file references no SHOPSTREAM_* variable"
    for name, op, default in refs:
        path = _field_path(name)
        assert path, f"${{{name}}} names no field of Settings"
        assert op == ":-", f"${{{name}}} needs a default: ${{{name}:-...}}"
        expected = _as_env_text(_value_at(defaults, path))
        assert default == expected, f"${{{name}:-{default}}} but Settings default is {expected!r}"


def test_only_shopstream_variables_are_interpolated(raw_text: str) -> None:
    """One .env drives both stacks: no compose-only knobs."""
    others = sorted({n for n, _, _ in _variables(raw_text) if not n.startswith("SHOPSTREAM_")})
    assert not others, f"variables outside Settings: {others}"


def test_container_side_settings_parse(scenario: tuple[dict[str, dict], Settings]) -> None:
    """SHOPSTREAM_* given to containers are real fields, parse, and point at compose services."""
    services, host_settings = scenario
    checked = 0
    for name, service in services.items():
        env = {k: v for k, v in _environment(service).items() if k.startswith("SHOPSTREAM_")}
        if not env:
            continue
        settings = _clean_settings(env)
        for key, value in env.items():
            path = _field_path(key)
            assert path, f"{name}: {key} names no field of Settings"
            assert _as_env_text(_value_at(settings, path)) == value, f"{name}: {key}={value} was not read"
            checked += 1
        hosts = {
            "kafka": [_host_port(s)[0] for s in settings.kafka.bootstrap_servers.split(",")],
            "mongo": [urlsplit(settings.mongo.uri).hostname],
            "s3": [urlsplit(settings.s3.endpoint_url).hostname],
            "postgres": [settings.postgres.host],
        }
        for group, group_hosts in hosts.items():
            for host in group_hosts:
                assert host in services, f"{name}: {group} host {host} is not a compose service"
        for path in SHARED_FIELDS:
            inside = _as_env_text(_value_at(settings, path))
            outside = _as_env_text(_value_at(host_settings, path))
            assert inside == outside, f"{name}: {'.'.join(path)} is {inside!r} inside, {outside!r} on the host"
    assert checked, "no container receives SHOPSTREAM_* settings"


def test_server_credentials_match_settings(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    minio, minio_init, postgres = (_environment(services[n]) for n in ("minio", "minio-init", "postgres"))
    s3, pg = settings.s3, settings.postgres
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (s3.access_key, s3.secret_key.get_secret_value())
    assert (minio_init["S3_ACCESS_KEY"], minio_init["S3_SECRET_KEY"]) == (
        s3.access_key,
        s3.secret_key.get_secret_value(),
    )
    assert minio["MINIO_SITE_REGION"] == s3.region
    assert (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]) == (
        pg.user,
        pg.password.get_secret_value(),
        pg.database,
    )


# --------------------------------------------------------------------------- init services == settings


def test_kafka_init_creates_the_settings_topics(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    script = _command_text(services["kafka-init"])
    assert "--create" in script
    every = settings.kafka.topics + settings.kafka.dimension_topics
    assert sorted(re.findall(r"--topic\s+(\S+)", script)) == sorted(every)
    compacted = re.findall(r"--topic\s+(\S+)\s+--config\s+cleanup\.policy=compact", script)
    assert sorted(compacted) == sorted(settings.kafka.dimension_topics)
    partitions = re.findall(r"--partitions\s+(\S+)", script)
    replication = re.findall(r"--replication-factor\s+(\S+)", script)
    assert partitions == [str(settings.kafka.partitions)] * len(every)
    assert replication == [str(settings.kafka.replication_factor)] * len(every)
    internal = _listeners(_environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]).values()
    for server in re.findall(r"--bootstrap-server\s+(\S+)", script):
        assert _host_port(server) in internal, f"kafka-init uses {server}, not an advertised listener"


def test_minio_init_creates_the_settings_bucket(scenario: tuple[dict[str, dict], Settings]) -> None:
    services, settings = scenario
    script = _command_text(services["minio-init"])
    aliases = dict(re.findall(r"mc alias set\s+(\S+)\s+(\S+)", script))
    buckets = re.findall(r"mc mb(?:\s+--[\w-]+)*\s+([^/\s]+)/(\S+)", script)
    assert buckets == [(next(iter(aliases)), settings.s3.bucket)] and len(aliases) == 1
    url = urlsplit(next(iter(aliases.values())))
    assert url.hostname == "minio" and url.port == MINIO_S3_PORT
