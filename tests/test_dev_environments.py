"""Checks of flake.nix and .devcontainer/ that run here, where neither can be built.

flake.nix is evaluated against the offline stubs in tests/nix/stubs (attribute names
and structure only, no real nixpkgs); devcontainer.json is checked against
tests/devcontainer.schema.json and against the project's settings (no image is built).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import json5
import jsonschema
import pytest

from shopstream.settings import Settings

REPO = Path(__file__).resolve().parents[1]
STUBS = REPO / "tests" / "nix" / "stubs"
DEVCONTAINER = REPO / ".devcontainer" / "devcontainer.json"
SCHEMA = REPO / "tests" / "devcontainer.schema.json"
NIX_APT_PACKAGE = "nix-bin"  # Debian 12: Nix 2.8, enough to parse and evaluate flakes
JUPYTER_PORT = 8888  # Jupyter's own default; not a field of Settings

# Stub names of what the dev shell must provide (see tests/nix/stubs/nixpkgs).
DEV_SHELL_PACKAGES = {
    "python311",
    "jdk17",
    "spark",
    "postgresql_15",
    "apacheKafka",
    "minio",
    "minio-client",
    "uv",
    "invoke",
    "git",
    "curl",
}


# --- Nix ----------------------------------------------------------------------------


def nix_tool(name: str) -> str:
    # Never skip: a missing tool must fail so CI cannot go green without the check.
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found: install the Debian package {NIX_APT_PACKAGE} "
            f"(apt-get install -y {NIX_APT_PACKAGE}); `./shopstream setup` should do it"
        )
    return path


@pytest.fixture(scope="module")
def flake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A flake inside a git work tree sees only tracked files, and `nix flake check`
    # would write flake.lock beside it: evaluate a copy in a plain directory instead.
    flake = tmp_path_factory.mktemp("flake")
    shutil.copy2(REPO / "flake.nix", flake / "flake.nix")
    return flake


def run_flake(flake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`nix ARGS path:FLAKE...` with the stub inputs, offline, in a throwaway store."""
    work = flake.parent / f"{flake.name}-nix"
    env = {
        **os.environ,
        "NIX_CONFIG": os.environ.get("NIX_CONFIG", "") + "\nexperimental-features = nix-command flakes",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    cmd = [
        nix_tool("nix"),
        *args,
        "--offline",
        "--no-write-lock-file",
        "--store",
        str(work / "store"),  # no /nix, no daemon, no root needed
        "--override-input",
        "nixpkgs",
        f"path:{STUBS / 'nixpkgs'}",
        "--override-input",
        "flake-utils",
        f"path:{STUBS / 'flake-utils'}",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_flake_parses() -> None:
    proc = subprocess.run(
        [nix_tool("nix-instantiate"), "--parse", str(REPO / "flake.nix")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


def test_flake_check_against_stubs(flake_dir: Path) -> None:
    proc = run_flake(flake_dir, "flake", "check", "--no-build", f"path:{flake_dir}")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("system", ["x86_64-linux", "aarch64-darwin"])
def test_dev_shell_contents(flake_dir: Path, system: str) -> None:
    show = "sh: { names = map (p: p.name) sh.packages; hook = sh.shellHook; }"
    proc = run_flake(flake_dir, "eval", "--json", "--apply", show, f"path:{flake_dir}#devShells.{system}.default")
    assert proc.returncode == 0, proc.stderr
    shell = json.loads(proc.stdout)
    assert set(shell["names"]) >= DEV_SHELL_PACKAGES, DEV_SHELL_PACKAGES - set(shell["names"])
    assert "export JAVA_HOME=/" in shell["hook"] and "-jdk17/" in shell["hook"]
    assert "./shopstream setup" in shell["hook"]


# --- devcontainer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def devcontainer() -> dict:
    return json5.loads(DEVCONTAINER.read_text())  # JSONC: comments are allowed


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Defaults only: neither the caller's SHOPSTREAM_* variables nor a .env file count.
    for name in list(os.environ):
        if name.startswith("SHOPSTREAM_"):
            monkeypatch.delenv(name)
    return Settings(_env_file=None)


def test_devcontainer_matches_schema(devcontainer: dict, validator) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(devcontainer)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "mistake",
    [
        lambda d: d.update(forwardedPorts=d.pop("forwardPorts")),  # misspelt key
        lambda d: d["forwardPorts"].append("8000"),  # port as a string
        lambda d: d.update(image="python:3.11"),  # both image and build
        lambda d: d.pop("postCreateCommand"),
        lambda d: d["portsAttributes"]["8000"].pop("label"),
        lambda d: d["portsAttributes"]["8000"].update(onAutoForward="open"),
        lambda d: d["customizations"]["vscode"].update(extension=[]),
        lambda d: d["customizations"]["vscode"]["settings"].update(
            {"python.defaultInterpreterPath": "/usr/bin/python3"}
        ),
    ],
)
def test_schema_rejects_mistakes(devcontainer: dict, validator, mistake) -> None:
    broken = json.loads(json.dumps(devcontainer))  # deep copy
    mistake(broken)
    assert not validator.is_valid(broken)


def test_forwarded_ports_are_the_settings_defaults(devcontainer: dict, default_settings: Settings) -> None:
    s = default_settings
    kafka_first = s.kafka.bootstrap_servers.split(",")[0]
    expected = {
        "api": s.api.port,
        "airflow": s.airflow.port,
        "kafka": urlsplit(f"//{kafka_first}").port,
        "mongo": urlsplit(s.mongo.uri).port,
        "s3": urlsplit(s.s3.endpoint_url).port,
        "postgres": s.postgres.port,
        "jupyter": JUPYTER_PORT,
    }
    assert None not in expected.values(), expected
    assert sorted(devcontainer["forwardPorts"]) == sorted(expected.values()), expected


def test_every_forwarded_port_has_a_label(devcontainer: dict) -> None:
    assert set(devcontainer["portsAttributes"]) == {str(p) for p in devcontainer["forwardPorts"]}


def test_post_create_runs_project_setup(devcontainer: dict) -> None:
    command = devcontainer["postCreateCommand"]
    words = shlex.split(command) if isinstance(command, str) else command
    assert words[:2] == ["./shopstream", "setup"], command


def test_dockerfile_is_bookworm_python311(devcontainer: dict) -> None:
    dockerfile = DEVCONTAINER.parent / devcontainer["build"]["dockerfile"]
    base = next(line for line in dockerfile.read_text().splitlines() if line.startswith("FROM "))
    assert "3.11" in base and "bookworm" in base, base
    assert "openjdk-17" in dockerfile.read_text()
