"""Benchmark plumbing: an isolated embedded stack, timing with repeats, JSON + Markdown reports."""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from shopstream.settings import Settings
from shopstream_stack.isolated import isolated_settings
from shopstream_stack.stack import services

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


@contextmanager
def isolated_stack(names: list[str]) -> Iterator[Settings]:
    """Start just these embedded servers (none for an empty list) on free ports in a temporary
    folder; remove it after."""
    root = Path(tempfile.mkdtemp(prefix="shopstream-bench-"))
    root.chmod(0o755)
    settings = isolated_settings(root / "run")
    svcs = services(settings, names)
    try:
        for svc in svcs:
            svc.start()
        yield settings
    finally:
        for svc in reversed(svcs):
            svc.stop()
        shutil.rmtree(root, ignore_errors=True)


def median_seconds(
    fn: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None
) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    limit_name: str = ""
    limit_value: float | None = None
    target: str = ""
    met: bool | None = None
    samples: list[float] = field(default_factory=list)
    note: str = ""
    # further limits measured in the same run, shown next to the main one: {name: value}
    other_limits: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return self.value / self.limit_value if self.limit_value else None


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def produce(settings: Settings, topic: str, records: Iterable[tuple[bytes, bytes]], label: str = "") -> int:
    """Fill a topic with pre-serialised (key, value) records, acknowledged (acks=all); returns how many."""
    from rich.progress import Progress

    from shopstream.adapters.kafka import kafka_producer

    records = list(records)
    producer = kafka_producer(
        settings.kafka,
        client_id="shopstream-bench-fill",
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
        compression_type="gzip",
    )
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task(label or f"filling {topic}", total=len(records))
            for start in range(0, len(records), 10_000):
                futures = [producer.send(topic, key=k, value=v) for k, v in records[start : start + 10_000]]
                producer.flush()
                for f in futures:
                    f.get(timeout=60)
                progress.advance(task, len(futures))
    finally:
        producer.close()
    return len(records)


@contextmanager
def spark_for(settings: Settings, app: str) -> Iterator[SparkSession]:
    """The project's SparkSession for these settings; stopped after, with Hadoop's FileSystem
    cache cleared, so a later run in this process (another isolated stack, same bucket name)
    does not get a file system bound to the old S3 endpoint."""
    from shopstream.adapters.spark import spark_session

    spark = spark_session(settings, app)
    try:
        yield spark
    finally:
        try:
            for q in spark.streams.active:
                q.stop()
            assert spark._jvm is not None  # a classic (not Spark Connect) session has its JVM
            spark._jvm.org.apache.hadoop.fs.FileSystem.closeAll()
        finally:
            spark.stop()


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {
            p: version(p)
            for p in (
                "fastapi",
                "uvicorn",
                "confluent-kafka",
                "kafka-python",
                "pymongo",
                "pyspark",
                "secantusdb",
                "noida-db",
            )
        },
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str | None:
    import subprocess

    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout or out.stderr).split(" [")[0].strip() or None


def write_report(figures: list[Figure], out_dir: Path, quick: bool = False) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    m = machine()
    data = {
        "when": stamp,
        "quick": quick,
        "machine": m,
        "figures": [asdict(f) | {"ratio": f.ratio} for f in figures],
    }
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(data, indent=2))
    lines = [
        f"# shopstream benchmarks ({stamp}{', --quick sizes' if quick else ''})",
        "",
        f"Machine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, {m['wrk'] or 'no wrk'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ".",
        "",
        "| figure | median | limit (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        limit = f"{f.limit_name}: {f.limit_value:.3g} {f.unit}" if f.limit_value is not None else ""
        limit = "; ".join(
            [limit] * bool(limit)
            + [
                f"{name}: {value:.3g} {f.unit} (ratio {f.value / value:.2f})"
                if value
                else f"{name}: {value:.3g} {f.unit}"
                for name, value in f.other_limits.items()
            ]
        )
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        lines.append(f"| {f.name} | {f.value:.3g} {f.unit} | {limit} | {ratio} | {f.target} | {met} |")
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    md_path.write_text("\n".join(lines + (["", *notes] if notes else [])) + "\n")
    return json_path, md_path
