"""The pipeline's health, polled in the background: services, API traffic, lag, DAG runs, streaming,
and the offset rewinds (where a stage read records again because the broker had lost some).

Every probe has a short timeout and runs beside the others, so one store that hangs
shows as down without holding up the rest (and is not asked again until it has answered);
the last snapshot is what `/api/health` returns. Each store's state is its adapter's health
check (`shopstream.adapters`), the one `invoke status` uses too, on the app's own clients (`deps`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pymongo
from kafka import TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from shopstream.adapters.airflow import airflow_health
from shopstream.adapters.api import READY_PATH, api_health
from shopstream.adapters.kafka import kafka_health
from shopstream.adapters.mongo import mongo_health
from shopstream.adapters.postgres import pg_health
from shopstream.adapters.s3 import s3_health
from shopstream.locations import PURCHASES
from shopstream.restarts import by_service, restarts_path
from shopstream.rewinds import Rewind, drain_rewinds, oldest_first, read_lines, streaming_file
from shopstream.settings import Settings, StackMode
from shopstream.streaming_status import purchases_read, read_status, status_path, unhealthy_reason

from .deps import Clients
from .readmodel import ReadModel
from .sync import Loop, SourceState, describe

BATCH_DAG_ID = "user_events_batch"  # components/dags/user_events_batch.py
BATCH_TASKS = {"drain": "stored", "aggregate": "events_counted"}  # task -> the report field shown
FINAL = {"success", "failed"}
PROBES = {"/healthz", READY_PATH, "/metrics"}
REWINDS_SHOWN = 5
STACK_NAMES = {"mongodb": "mongo", "postgresql": "postgres"}  # the page's name -> the stack's


def rewinds_summary(found: list[Rewind]) -> dict[str, Any]:
    """The health's `rewinds`: how many each stage recorded, and the latest few, newest first."""
    ordered = oldest_first(found)
    return {
        "count": len(ordered),
        "by_stage": dict(Counter(r.stage for r in ordered)),
        "latest": [asdict(r) for r in reversed(ordered[-REWINDS_SHOWN:])],
    }


class ApiTrafficMeter:
    """Rates from two successive scrapes of the API's Prometheus /metrics."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[str, float]] | None = None

    @staticmethod
    def totals(metrics_text: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(metrics_text):
            for s in family.samples:
                if s.name == "http_requests_total":
                    if s.labels.get("handler") in PROBES:  # health checks (ours included) are not traffic
                        continue
                    status = s.labels.get("status", "")
                    out["all"] = out.get("all", 0.0) + s.value
                    out[status[:1] + "xx"] = out.get(status[:1] + "xx", 0.0) + s.value
                elif s.name == "shopstream_published_records_total":
                    key = f"published:{s.labels.get('topic', '')}"
                    out[key] = out.get(key, 0.0) + s.value
        return out

    def rates(self, at: float, metrics_text: str) -> dict[str, Any] | None:
        now = self.totals(metrics_text)
        last, self._last = self._last, (at, now)
        if last is None or at <= last[0]:
            return None
        dt = at - last[0]
        rate = {k: max(0.0, v - last[1].get(k, 0.0)) / dt for k, v in now.items()}
        all_ = rate.get("all", 0.0)
        return {
            "requests_per_s": round(all_, 2),
            "errors_per_s": round(rate.get("5xx", 0.0), 2),
            "rejected_per_s": round(rate.get("4xx", 0.0), 2),
            "error_rate": round(rate.get("5xx", 0.0) / all_, 4) if all_ else 0.0,
            "published_per_s": {k.split(":", 1)[1]: round(v, 2) for k, v in rate.items() if k.startswith("published:")},
        }


class HealthMonitor(Loop):
    name = "health"

    def __init__(self, model: ReadModel, settings: Settings, clients: Clients, interval: float) -> None:
        super().__init__(interval)
        self.model, self.settings, self.clients = model, settings, clients
        self.timeout = clients.timeout_s
        self.meter = ApiTrafficMeter()
        self.pool = ThreadPoolExecutor(12, thread_name_prefix="dashboard-probe")
        self._probes: dict[str, Future] = {}  # each store's last probe: a new one only once it has answered
        self._run_reports: dict[tuple[str, str], Any] = {}  # (run, task) -> report, for finished runs
        self._lock = threading.Lock()
        self._status: dict[str, Any] | None = None  # the streaming job's status file, read once per step
        self.snapshot: dict[str, Any] = {
            "as_of": datetime.now(UTC),
            "services": [],
            "api": None,
            "lag": [],
            "dag_runs": [],
            "streaming": None,
            "rewinds": None,
            "sources": [],
        }

    # -- probes: each returns (state, detail) or data, and raises when its store does not answer
    def _with_kafka(self, use):
        """`use(admin, consumer)` under the Kafka clients' lock; clients that failed are rebuilt next time."""
        with self.clients.kafka.lock:
            try:
                return use(*self.clients.kafka.get())
            except Exception:
                self.clients.kafka.drop()
                raise

    def lag(self) -> list[dict[str, Any]]:
        kafka, out = self.settings.kafka, []
        group = self.settings.batch.consumer_group

        def read(admin, consumer) -> tuple[dict[str, dict[int, int]], dict]:
            ends: dict[str, dict[int, int]] = {}
            for topic in kafka.topics:
                parts = consumer.partitions_for_topic(topic) or set()
                got = consumer.end_offsets([TopicPartition(topic, p) for p in parts]) if parts else {}
                ends[topic] = {tp.partition: o for tp, o in got.items()}
            return ends, admin.list_group_offsets({group: None}).get(group, {})

        ends, committed = self._with_kafka(read)
        topic = kafka.user_events_topic
        done = sum(max(0, om.offset) for tp, om in committed.items() if tp.topic == topic)
        end = sum(ends[topic].values())
        out.append({"topic": topic, "group": group, "lag": max(0, end - done), "end": end})
        done_p = purchases_read(self._status, kafka.purchases_topic)
        end_p = sum(ends[kafka.purchases_topic].values())
        if done_p is not None:
            out.append(
                {
                    "topic": kafka.purchases_topic,
                    "group": "streaming job (Spark checkpoint)",
                    "lag": max(0, end_p - done_p),
                    "end": end_p,
                }
            )
        return out

    def dag_runs(self, limit: int = 5) -> list[dict[str, Any]]:
        base = f"/api/v2/dags/{BATCH_DAG_ID}/dagRuns"
        runs = self.clients.airflow.get(base, params={"order_by": "-run_after", "limit": limit})
        runs = runs.raise_for_status().json()
        out = []
        for run in runs.get("dag_runs", []):
            row = {
                "run_id": run["dag_run_id"],
                "state": run["state"],
                "start": run.get("start_date"),
                "end": run.get("end_date"),
                "drained": None,
                "counted": None,
            }
            for task_id, field in BATCH_TASKS.items():
                report = self._report(base, run, task_id)
                if isinstance(report, dict):
                    row["drained" if task_id == "drain" else "counted"] = report.get(field)
            out.append(row)
        return out

    def _report(self, base: str, run: dict[str, Any], task_id: str) -> Any:
        key = (run["dag_run_id"], task_id)
        if key in self._run_reports:
            return self._run_reports[key]
        url = f"{base}/{quote(run['dag_run_id'], safe='')}/taskInstances/{task_id}/xcomEntries/return_value"
        r = self.clients.airflow.get(url)
        value = r.json().get("value") if r.status_code == 200 else None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if run["state"] in FINAL:
            self._run_reports[key] = value
        return value

    def api_traffic(self) -> dict[str, Any] | None:
        at = datetime.now(UTC).timestamp()
        return self.meter.rates(at, self.clients.api.get("/metrics").raise_for_status().text)

    def streaming(self) -> dict[str, Any] | None:
        query = ((self._status or {}).get("queries") or {}).get(PURCHASES)
        newest = self.model.newest_ingested()
        freshness = round((datetime.now(UTC) - newest).total_seconds(), 1) if newest else None
        if query is None:
            return (
                None
                if freshness is None
                else {
                    "batch_id": None,
                    "batch_at": None,
                    "input_rows": 0,
                    "output_rows": None,
                    "batch_ms": None,
                    "freshness_s": freshness,
                }
            )
        at = query.get("progress_at")
        return {
            "batch_id": query.get("batch_id"),
            "batch_at": datetime.fromtimestamp(at, UTC) if at else None,
            "input_rows": query.get("input_rows") or 0,
            "output_rows": query.get("output_rows"),
            "batch_ms": query.get("batch_ms"),
            "freshness_s": freshness,
        }

    def rewinds(self) -> dict[str, Any]:
        """Both stages' recorded rewinds (the drain's only while MongoDB answers; the
        services row shows when it does not)."""
        found = read_lines(streaming_file(self.settings))
        with contextlib.suppress(pymongo.errors.PyMongoError):
            found += drain_rewinds(self.clients.collections(self.settings).rewinds)
        return rewinds_summary(found)

    def services(self) -> list[dict[str, Any]]:
        """Each service's state: the stores' by their adapters' health checks."""
        s, c = self.settings, self.clients

        def streaming() -> str:
            why = unhealthy_reason(self._status, s)
            if why:
                raise RuntimeError(why)
            return "queries running"

        probes = {
            "api": lambda: api_health(c.api),
            "kafka": lambda: self._with_kafka(lambda admin, _: kafka_health(admin)),
            "mongodb": lambda: mongo_health(c.mongo),
            "postgresql": lambda: pg_health(c.pg),
            "s3": lambda: s3_health(c.s3, s.s3.bucket),
            "airflow": lambda: airflow_health(c.airflow, runs_all=s.stack == StackMode.embedded),
            "streaming": streaming,
        }
        futures = {name: self._probe(name, fn) for name, fn in probes.items()}
        out = []
        for name, f in futures.items():
            try:
                out.append({"name": name, "state": "up", "detail": f.result(timeout=self.timeout + 2)})
            except Exception as e:  # noqa: BLE001 - any failure means down, with its reason
                out.append({"name": name, "state": "down", "detail": describe(e)})
        return out

    def step(self) -> None:
        parts = {
            "services": self.services,
            "api": self.api_traffic,
            "lag": self.lag,
            "dag_runs": self.dag_runs,
            "streaming": self.streaming,
        }
        names = {"api": "api", "lag": "kafka", "dag_runs": "airflow", "streaming": "streaming"}
        self._status = read_status(status_path(self.settings))
        futures = {k: self.pool.submit(fn) for k, fn in parts.items() if k != "services"}
        rewound = self.pool.submit(self.rewinds)
        snap: dict[str, Any] = {"as_of": datetime.now(UTC), "services": self.services()}
        sources = []
        for key, f in futures.items():
            source = SourceState(names[key])
            try:
                snap[key] = f.result(timeout=self.timeout + 5)
                source.ok()
            except Exception as e:  # noqa: BLE001 - shown on the page as that part being down
                snap[key] = [] if key in ("lag", "dag_runs") else None
                source.failed(e)
            sources.append(source.as_dict())
        self._add_restarts(snap["services"])
        snap["sources"] = sources
        try:
            snap["rewinds"] = rewound.result(timeout=self.timeout + 5)
        except Exception:  # noqa: BLE001 - shown as unknown; the stores' own rows say why
            snap["rewinds"] = None
        with self._lock:
            self.snapshot = snap
        self.source.ok()

    def _add_restarts(self, found: list[dict[str, Any]]) -> None:
        """Each service's restarts by the stack's supervisor; the dashboard and the generator,
        which no probe checks, are listed too (this page answering is the dashboard's health)."""
        if self.settings.stack != StackMode.embedded:
            return
        counts = by_service(restarts_path(self.settings))
        found += [
            {"name": n, "state": "up", "detail": "serves this page" if n == "dashboard" else "sends traffic"}
            for n in ("generator", "dashboard")
        ]
        for svc in found:
            svc["restarts"] = counts.get(STACK_NAMES.get(svc["name"], svc["name"]), {}).get("restarts", 0)

    def current(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.snapshot)

    def _probe(self, name: str, fn) -> Future:
        """A new probe of `name`, or the one still waiting for its answer: a store that hangs holds
        one thread, not one more every step."""
        running = self._probes.get(name)
        if running is None or running.done():
            self._probes[name] = running = self.pool.submit(fn)
        return running

    def stop(self) -> None:
        super().stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
