"""The API under several uvicorn workers, as the stack runs it: /metrics sums them, each journals.

A real 2-worker API (the stack's `ApiService`, `SHOPSTREAM_API__WORKERS=2`) against a broker
of the module's own. Requests are sent on fresh connections until both workers have
answered some (each journals into its own slot, whose name its ledger file carries); then
/metrics, whichever worker answers the scrape, counts exactly the records acknowledged, and
every acknowledged EventId is in the ledger.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from conftest import end_offsets, own_broker
from shopstream import ledger
from shopstream.settings import Settings
from shopstream_api.examples import USER_EVENT_EXAMPLE
from shopstream_stack.apps import ApiService
from shopstream_stack.isolated import free_port
from shopstream_stack.process import tail, wait_until

pytestmark = pytest.mark.services

WORKERS = 2


@pytest.fixture(scope="module")
def api(settings):
    with own_broker(settings, "shopstream-workers-") as own:
        cfg: Settings = own.settings
        cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": free_port(), "workers": WORKERS})})
        svc = ApiService(cfg)
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = 0.0
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if all(part in m[1].split(",") for part in wanted.split(",")):
            found += float(m[2])
    return found


def slots_of(cfg: Settings, event_ids: set[str]) -> Counter[str]:
    """How many of these EventIds each journal slot's ledger holds."""
    per_slot: Counter[str] = Counter()
    for path in ledger.ledger_dir(cfg).glob(f"*{ledger.SUFFIX}"):
        ids = {line.split(b"\t")[3].rstrip(b"\n").decode() for line in path.read_bytes().splitlines(keepends=True)}
        per_slot[path.stem.rsplit("-", 1)[0]] += len(ids & event_ids)
    return per_slot


def send(base_url: str, run: str, i: int) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=30) as client:  # a new connection: any worker may take it
        return client.put("/SendEvent", json={**USER_EVENT_EXAMPLE, "SessionId": f"w-{run}-{i}"})


def workers_of(master: psutil.Process) -> list[psutil.Process]:
    """uvicorn's worker processes under this master (not multiprocessing's resource tracker)."""
    return [p for p in master.children() if "spawn_main" in " ".join(p.cmdline())]


def test_the_stack_runs_the_configured_number_of_workers(api):
    assert len(workers_of(psutil.Process(api.procs()[0].pid()))) == WORKERS


def test_metrics_count_every_request_of_every_worker_and_each_worker_journals(api):
    cfg = api.settings
    topic = cfg.kafka.user_events_topic
    before = sum(end_offsets(cfg, topic).values())
    run, acked, sent = uuid.uuid4().hex[:8], set(), 0
    deadline = time.monotonic() + 120
    with ThreadPoolExecutor(8) as pool:
        while True:  # in rounds of 50, until both workers have answered some
            answers = list(pool.map(lambda i: send(cfg.api.base_url, run, i), range(sent, sent + 50)))
            sent += len(answers)
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
            acked |= {r.json()["EventId"] for r in answers}
            if len([s for s, n in slots_of(cfg, acked).items() if n]) == WORKERS:
                break
            assert time.monotonic() < deadline, f"one worker answered all {sent} requests: {slots_of(cfg, acked)}"
    n = len(acked)
    assert n == sent
    # every acknowledged record is in the ledger, written by one worker or the other
    assert sum(slots_of(cfg, acked).values()) == n
    assert sum(end_offsets(cfg, topic).values()) - before == n
    # each scrape is answered by one worker, and each must count all N
    for _ in range(6):
        with httpx.Client(base_url=cfg.api.base_url, timeout=30) as client:
            text = client.get("/metrics").text
        assert metric(text, "shopstream_published_records_total", topic=topic) == n
        assert metric(text, "http_requests_total", handler="/SendEvent", status="2xx") == n
        assert metric(text, "http_request_duration_seconds_count", handler="/SendEvent") == n
        # counters of what has not happened are there at 0 for each topic, not missing
        for name in ("shopstream_broker_losses_total", "shopstream_journal_republished_records_total"):
            for t in cfg.kafka.topics:
                assert re.search(rf'^{name}\{{topic="{t}"\}} 0\.0$', text, re.M), (name, t)


def test_workers_end_with_a_master_killed_with_sigkill(api, tmp_path):
    """kill -9 of uvicorn's master must not leave its workers holding the port, unsupervised:
    the master supervisord starts again could never bind it.

    supervisord restarts the master at once, so whether the port refuses a connection in
    between is a race; what must hold is that the old workers end and a new master, with
    its own workers, serves the port.
    """
    cfg = api.settings.model_copy(update={"run_dir": tmp_path / "run"})
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": free_port()})})
    svc = ApiService(cfg)
    svc.start()
    try:
        (proc,) = svc.procs()
        master = psutil.Process(proc.pid())
        workers = workers_of(master)
        assert len(workers) == WORKERS
        master.kill()
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"workers outlived their master: {[p.pid for p in alive]}"

        def served_by_a_new_master() -> bool:
            pid = proc.pid()
            return pid not in (None, master.pid) and len(workers_of(psutil.Process(pid))) == WORKERS and svc.healthy()

        assert wait_until(served_by_a_new_master, timeout_s=120), (
            f"the restarted API never served its port: {proc.state()}\n{tail(proc.log_file, 20)}"
        )
    finally:
        svc.stop()
