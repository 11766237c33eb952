"""Benchmark plumbing: an isolated embedded stack, timing with repeats, JSON + Markdown reports."""

from __future__ import annotations

import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psutil

from shopstream.settings import Settings
from shopstream_stack.isolated import isolated_settings
from shopstream_stack.stack import services


@contextmanager
def isolated_stack(names: list[str]) -> Iterator[Settings]:
    """Start just these embedded servers on free ports in a temporary folder; remove it after."""
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


def median_seconds(fn: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None) -> tuple[float, list[float]]:
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

    @property
    def ratio(self) -> float | None:
        return self.value / self.limit_value if self.limit_value else None


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": {p: version(p) for p in ("pymongo", "kafka-python", "secantusdb", "noida-db")},
    }


def write_report(figures: list[Figure], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = {"when": stamp, "machine": machine(), "figures": [asdict(f) | {"ratio": f.ratio} for f in figures]}
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(data, indent=2))
    lines = [f"# shopstream benchmarks ({stamp})", "",
             f"Machine: {data['machine']['cpus']} CPUs, {data['machine']['memory_gib']} GiB, "
             f"Python {data['machine']['python']}.", "",
             "| figure | median | limit (same run) | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]
    for f in figures:
        limit = f"{f.limit_name}: {f.limit_value:.3g} {f.unit}" if f.limit_value is not None else ""
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        lines.append(f"| {f.name} | {f.value:.3g} {f.unit} | {limit} | {ratio} | {f.target} | {met} |")
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    md_path.write_text("\n".join(lines + ([""] + notes if notes else [])) + "\n")
    return json_path, md_path
