"""The running stack's footprint: CPU and memory per service at the generator's default pace,
then how fast the batch drains a backlog under that load.

Needs: every embedded server (`SERVERS`); this stage starts the pipeline's components on
them as `invoke up` does (the API, the streaming job, Airflow, the dashboard, the
generator), each supervised, on the isolated stack's free ports.

Footprint: after a settling time, over a window (`WINDOW_S`, 5 minutes; `--quick` 2, one
DAG period), the CPU each supervised program's process tree used (psutil `cpu_times` of
every live process of the tree, children it reaped included, at the window's start and
end: a task process Airflow starts and ends inside the window counts in its parent's
`children_*` times), as % of one core; and the tree's RSS, sampled every `SAMPLE_S` (mean
and max). supervisord and its restart listener are a row of their own (supervisord's own
times only: its children are the services). Target: the whole stack at most half of the
machine's 2 cores, 100% of one core.

Catch-up: with the stack still running and the generator at its pace, a backlog of valid
UserEvents records is published straight to the topic, and `drain_user_events` (what the
DAG's drain task calls) drains what it can of it within the budget of a DAG run's drain
(`CATCH_UP_BUDGET_S`, 60 s), in a consumer group of its own that starts at the
topic's end before the backlog, into a database of its own on the stack's MongoDB (the
stack's own DAG keeps draining and aggregating beside it). Rate = records stored / the
drain's wall time. Then `update_event_counts` counts them within the same budget, rate
= events counted / its wall time; the counts must sum to exactly the events counted.
Limit: the generator's default pace in UserEvents/s (its default sessions a second times
the events a session has, averaged over cohorts it builds); target: both at least 10x
that. On a busy machine the generator sends fewer (it waits for each answer), so the
pace it reached over the window is shown beside it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psutil
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata
from rich.console import Console
from rich.table import Table

from shopstream.adapters.kafka import kafka_consumer
from shopstream.adapters.mongo import mongo_client
from shopstream.settings import Settings
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.drain import drain_user_events
from shopstream_generator.catalogue import build_world, seeded_faker
from shopstream_generator.cohort import build_cohort
from shopstream_stack.process import StackError
from shopstream_stack.service import Service
from shopstream_stack.stack import APP_TYPES, services
from shopstream_stack.supervision import LISTENER, Supervisor

from .api import event_records
from .harness import Figure, produce

SERVERS = ["kafka", "mongo", "postgres", "s3"]
WINDOW_S, QUICK_WINDOW_S = 300.0, 120.0
START_S = 300.0  # at most, for each component to answer
SETTLE_S = 30.0  # after the last component is healthy: first imports, the DAG's first run
SAMPLE_S = 2.0
# records published at once, and each task's budget: the DAG's own (60 s) or until all is done
BACKLOG, QUICK_BACKLOG = 60_000, 20_000
CATCH_UP_BUDGET_S, QUICK_CATCH_UP_BUDGET_S = 60.0, 30.0
AT_PACE = 0.8  # the generator reached at least this share of its default pace, or the target is not judged
CORE_TARGET = 100.0  # % of one core: half of the machine's 2 cores
CATCH_UP_TARGET = 10.0  # x the generator's pace
console = Console()


@dataclass
class Tree:
    """One supervised program's processes: CPU seconds at the start, RSS samples."""

    service: str
    program: str
    pid: int
    own_only: bool = False  # supervisord: its children are the services, counted on their own rows
    cpu0: float = 0.0
    cpu_s: float | None = None  # over the window; None if the root died meanwhile
    rss: list[float] = field(default_factory=list)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root] if self.own_only else [root, *root.children(recursive=True)]

    def cpu(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
            except psutil.Error:  # ended between the listing and the read: its parent reaps its times
                continue
            total += t.user + t.system + (0 if self.own_only else t.children_user + t.children_system)
        return total

    def sample_rss(self) -> None:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        self.rss.append(total / 2**20)


def _trees(settings: Settings, svcs: list[Service]) -> list[Tree]:
    trees = [Tree(s.name, p.name, pid) for s in svcs for p in s.procs() if (pid := p.pid()) is not None]
    sup = Supervisor(settings)
    daemon = sup._daemon_pid()
    if daemon:
        trees.append(Tree("supervisor", "supervisord", daemon, own_only=True))
    for info in sup.rpc().getAllProcessInfo():
        if info["group"] == LISTENER and info["pid"]:
            trees.append(Tree("supervisor", "restart listener", info["pid"]))
    return trees


def _measure(trees: list[Tree], seconds: float) -> float:
    """CPU seconds and RSS samples of every tree over `seconds`; returns the window's length."""
    for t in trees:
        t.cpu0 = t.cpu()
    t0 = time.monotonic()
    while (left := seconds - (time.monotonic() - t0)) > 0:
        for t in trees:
            with contextlib.suppress(psutil.Error):
                t.sample_rss()
        time.sleep(min(SAMPLE_S, left))
    elapsed = time.monotonic() - t0
    for t in trees:
        try:
            t.cpu_s = t.cpu() - t.cpu0
        except psutil.Error:  # the root died: the supervisor started another, not measured
            t.cpu_s = None
    return elapsed


def _user_events_end(settings: Settings) -> int:
    consumer = kafka_consumer(settings.kafka, client_id="shopstream-bench-footprint")
    try:
        topic = settings.kafka.user_events_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()


def _start_group_at_end(settings: Settings, group: str) -> None:
    """Commit the topic's end offsets for `group`, so its drain takes only what comes after."""
    consumer = kafka_consumer(settings.kafka, group_id=group, enable_auto_commit=False)
    try:
        topic = settings.kafka.user_events_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in ends.items()})
    finally:
        consumer.close()


def _catch_up(settings: Settings, n: int, budget_s: float) -> tuple[float, float, str]:
    """(drain records/s, aggregation events/s, what went wrong or '') for a backlog of `n`,
    each task within `budget_s` as a DAG run's is: what it leaves is not a fault."""
    tag = uuid.uuid4().hex[:8]
    cfg = settings.model_copy(
        update={
            "mongo": settings.mongo.model_copy(update={"database": f"bench_catchup_{tag}"}),
            "batch": settings.batch.model_copy(
                update={
                    "consumer_group": f"bench-catchup-{tag}",
                    "max_seconds": budget_s,
                    "aggregate_max_seconds": budget_s,
                }
            ),
        }
    )
    _start_group_at_end(cfg, cfg.batch.consumer_group)
    produce(cfg, cfg.kafka.user_events_topic, event_records(n, f"catchup{tag}"), f"a backlog of {n:,} events")
    problems = []
    client = mongo_client(cfg.mongo)
    try:
        t0 = time.perf_counter()
        drained = drain_user_events(cfg)
        drain_s = time.perf_counter() - t0
        if drained.dead_lettered or drained.duplicates:
            problems.append(
                f"drain stored {drained.stored:,}, dead-lettered {drained.dead_lettered}, "
                f"duplicates {drained.duplicates}"
            )
        t0 = time.perf_counter()
        counted = update_event_counts(cfg)
        agg_s = time.perf_counter() - t0
        db = client[cfg.mongo.database]
        sum_counts = [{"$group": {"_id": None, "n": {"$sum": "$EventCount"}}}]
        sums = list(db[cfg.batch.counts_collection].aggregate(sum_counts))
        total = sums[0]["n"] if sums else 0
        if total != counted.events_counted or total + counted.remaining != drained.stored:
            problems.append(
                f"EventCount sums to {total:,} for {counted.events_counted:,} events counted, "
                f"{counted.remaining:,} left of {drained.stored:,} stored"
            )
    finally:
        client.drop_database(cfg.mongo.database)
        client.close()
    console.print(
        f"  catch-up: drained {drained.stored:,} (left {drained.remaining:,}) in {drain_s:.1f} s "
        f"({drained.stored / drain_s:,.0f}/s, "
        f"{drained.batches} batches); counted {counted.events_counted:,} in {agg_s:.1f} s "
        f"({counted.events_counted / agg_s:,.0f}/s, {counted.batches} batches)"
    )
    return drained.stored / drain_s, counted.events_counted / max(agg_s, 1e-9), "; ".join(problems)


def default_pace(settings: Settings, cohorts: int = 60) -> float:
    """UserEvents/s the generator sends at its default pace: the events of its cohorts, one a second."""
    world = build_world(0)
    fake = seeded_faker("footprint")
    now = datetime.now(UTC)
    sessions = settings.generator.sessions_per_second
    return statistics.fmean(len(build_cohort(world, fake, now, sessions).events) for _ in range(cohorts))


def _table(rows: dict[str, dict[str, float]], window: float) -> None:
    table = Table(title=f"CPU and memory per service over {window:.0f} s")
    for col in ("service", "CPU % of a core", "RSS mean MB", "RSS max MB"):
        table.add_column(col, justify="left" if col == "service" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['cpu']:.1f}", f"{r['rss_mean']:.0f}", f"{r['rss_max']:.0f}")
    console.print(table)


def run(settings: Settings, quick: bool = False, window_s: float | None = None) -> list[Figure]:
    window_s = window_s or (QUICK_WINDOW_S if quick else WINDOW_S)
    backlog = QUICK_BACKLOG if quick else BACKLOG
    # a busy machine (the other benchmarks, tests) can take minutes to start Spark and Airflow
    slow = settings.model_copy(update={"embedded": settings.embedded.model_copy(update={"start_timeout_s": START_S})})
    apps = [s for s in services(slow, apps=True) if isinstance(s, APP_TYPES)]
    figures: list[Figure] = []
    try:
        missing = []
        for svc in list(apps):
            t0 = time.monotonic()
            try:
                svc.start()
            except StackError as e:  # measure the rest, and say so
                console.print(f"  [red]{svc.name} did not start[/red]: {str(e).splitlines()[0]}")
                missing.append(svc.name)
                apps.remove(svc)
                continue
            console.print(f"  {svc.name} up in {time.monotonic() - t0:.0f} s")
        servers = services(settings, SERVERS)
        console.print(f"  settling {SETTLE_S:.0f} s, then measuring {window_s:.0f} s")
        time.sleep(SETTLE_S)
        trees = _trees(settings, servers + apps)
        end0 = _user_events_end(settings)
        window = _measure(trees, window_s)
        reached = (_user_events_end(settings) - end0) / window
        pace = default_pace(settings)
        rows: dict[str, dict[str, float]] = {}
        programs: dict[str, list[str]] = {}
        lost = []
        for t in trees:
            r = rows.setdefault(t.service, {"cpu": 0.0, "rss_mean": 0.0, "rss_max": 0.0})
            if t.cpu_s is None:
                lost.append(f"{t.service}/{t.program}")
            cpu = 100 * (t.cpu_s or 0.0) / window
            r["cpu"] += cpu
            r["rss_mean"] += statistics.fmean(t.rss) if t.rss else 0.0
            r["rss_max"] += max(t.rss, default=0.0)  # a sum of maxima: an upper bound
            programs.setdefault(t.service, []).append(f"{t.program} {cpu:.1f}%")
        total = {k: sum(r[k] for r in rows.values()) for k in ("cpu", "rss_mean", "rss_max")}
        _table({**rows, "total": total}, window)
        console.print(f"  UserEvents: {reached:.0f} records/s during the window; the default pace {pace:.0f}/s")
        restarted = f" Restarted during the window, their CPU not counted: {', '.join(lost)}." if lost else ""
        if reached < AT_PACE * pace:
            restarted += f" Not judged: the generator reached less than {AT_PACE:.0%} of its pace (a busy machine)."
        if missing:
            restarted += f" **Not running** (did not start within {START_S:.0f} s): {', '.join(missing)}."
        for name, r in rows.items():
            figures.append(
                Figure(
                    f"footprint: {name}",
                    r["cpu"],
                    "% of a core",
                    note=f"RSS mean {r['rss_mean']:.0f} MB, max {r['rss_max']:.0f} MB; " + ", ".join(programs[name]),
                )
            )
        figures.append(
            Figure(
                f"footprint: whole stack at the generator's pace ({window:.0f} s)",
                total["cpu"],
                "% of a core",
                limit_name="half of the machine's 2 cores",
                limit_value=CORE_TARGET,
                target="<= 1.0 (at most 100% of one core)",
                # judged only at (nearly) the default pace: a slowed generator loads the stack less
                met=(total["cpu"] <= CORE_TARGET and not missing) if reached >= AT_PACE * pace else None,
                note=f"RSS mean {total['rss_mean']:.0f} MB (sum of the services' maxima {total['rss_max']:.0f} MB); "
                f"the generator sent {reached:.0f} UserEvents/s (its default pace: {pace:.0f}/s).{restarted}",
            )
        )
        budget = QUICK_CATCH_UP_BUDGET_S if quick else CATCH_UP_BUDGET_S
        drain_rate, agg_rate, problems = _catch_up(settings, backlog, budget)
        ok = problems or "Every record stored once, EventCount exact."
        for what, rate in (("drain", drain_rate), ("aggregation", agg_rate)):
            figures.append(
                Figure(
                    f"catch-up under the full stack: {what} of a {backlog:,}-event backlog",
                    rate,
                    "events/s",
                    limit_name="the generator's default pace (UserEvents/s)",
                    limit_value=pace,
                    target=f">= {CATCH_UP_TARGET:.0f}x the pace",
                    met=not problems and rate >= CATCH_UP_TARGET * pace,
                    note=f"within a {budget:.0f} s budget, as a DAG run's task; into a database of its own on the "
                    f"stack's MongoDB, the stack's DAG running beside it. {ok}",
                )
            )
    finally:
        for svc in reversed(apps):
            svc.stop()
    return figures
