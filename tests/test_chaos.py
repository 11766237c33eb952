"""`invoke chaos`, short: the whole pipeline on a stack of its own, random SIGKILL/SIGTERM under
the generator's load, the supervisor's restarts, the catch-up, and an audit with nothing lost."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import make_settings
from test_up import invoke

pytestmark = pytest.mark.services

MINUTES = 0.5  # of faults (2 to 4 of them); the catch-up after them takes one 30-s DAG period or two more


@pytest.mark.timeout(1800)
def test_a_short_chaos_run_loses_and_doubles_nothing():
    run_dir = Path(tempfile.mkdtemp(prefix="shopstream-chaos-"))
    run_dir.chmod(0o755)  # PostgreSQL's user must reach its folder
    settings = make_settings(run_dir / "run")
    # the DAG every 30 s: the catch-up waits for one drain, not for a 2-minute period; and a
    # quarter of the generator's default load, which leaves CPU to the rest of a CI run
    settings = settings.model_copy(
        update={
            "batch": settings.batch.model_copy(update={"period_seconds": 30.0}),
            "generator": settings.generator.model_copy(update={"sessions_per_second": 5}),
        }
    )
    try:
        done = invoke(settings, "chaos", "--minutes", str(MINUTES), "--seed", "14", timeout=1500)
    finally:
        invoke(settings, "down", timeout=300)
        shutil.rmtree(run_dir, ignore_errors=True)
    out = done.stdout + done.stderr
    print(out[-6000:])
    faults = re.findall(r"SIG(?:KILL|TERM) \w+ \(.+?\)(?: \(SIGKILL after \d+ s\))?: healthy again in [\d.]+ s", out)
    summary = re.search(r"(\d+) faults; records accepted during the run: ([\d,]+); missing (\d+), doubled (\d+)", out)
    assert summary, out[-3000:]
    assert len(faults) == int(summary[1]) >= 1, out[-3000:]
    assert int(summary[2].replace(",", "")) > 0 and summary[3] == summary[4] == "0"
    assert done.returncode == 0, out[-3000:]
