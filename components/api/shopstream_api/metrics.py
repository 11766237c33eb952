"""Prometheus metrics the API exports at /metrics, summed over its uvicorn workers.

Under several workers (`api.workers`), the stack sets `PROMETHEUS_MULTIPROC_DIR`: every
worker writes its values to files there (prometheus-client's multiprocess mode) and
/metrics, whichever worker answers it, adds up the files of all of them. The journal's
gauges count the live workers only (`livesum`); a worker marks itself dead when it stops,
and one that starts marks those that died without saying so. Without the variable (one
process, the tests' in-process servers) each app keeps its own registry, so several apps
in one process never clash.

HTTP request metrics keep the names and labels of prometheus-fastapi-instrumentator
(`http_requests_total{handler,method,status}` with the status grouped as 2xx/4xx/5xx, and
`http_request_duration_seconds{handler,method}`), which the dashboard reads, at one
counter and one histogram per request.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import psutil
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as mp
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> Path | None:
    folder = os.environ.get(MULTIPROC_ENV)
    return Path(folder) if folder else None


class ApiMetrics:
    def __init__(self, topics: list[str] | tuple[str, ...] = ()) -> None:
        """`topics`: the per-topic counters start at 0 for each, so a scraper (the audit, the
        dashboard) reads "none yet" as 0, not as a counter that is not exported."""
        folder = multiprocess_dir()
        own = None if folder else CollectorRegistry()  # multiprocess: values live in files, not a registry
        if folder:
            self.registry = CollectorRegistry()
            mp.MultiProcessCollector(self.registry, path=str(folder))
            _mark_dead_workers(folder)
        else:
            assert own is not None
            self.registry = own
        self.published = Counter(
            "shopstream_published_records", "Records acknowledged by Kafka", ["topic"], registry=own
        )
        self.publish_failures = Counter(
            "shopstream_publish_failures", "Records Kafka did not acknowledge", ["topic"], registry=own
        )
        self.rejected = Counter(
            "shopstream_rejected_requests", "Requests refused before publishing", ["reason"], registry=own
        )
        self.broker_losses = Counter(
            "shopstream_broker_losses",
            "Checks that found acknowledged records the broker no longer holds",
            ["topic"],
            registry=own,
        )
        self.republished = Counter(
            "shopstream_journal_republished_records",
            "Acknowledged records published again from the journal after the broker lost them",
            ["topic"],
            registry=own,
        )
        self.journal_records = Gauge(
            "shopstream_journal_records",
            "Acknowledged records the journal still keeps (awaiting a read-back from the broker)",
            registry=own,
            multiprocess_mode="livesum",
        )
        self.journal_bytes = Gauge(
            "shopstream_journal_bytes", "Size of the journal on disk", registry=own, multiprocess_mode="livesum"
        )
        self.requests = Counter(
            "http_requests",
            "HTTP requests by handler, method and status class",
            ["method", "status", "handler"],
            registry=own,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request to the end of the answer",
            ["method", "handler"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )

        self._series: dict[tuple[str, int, str], tuple[Any, Any]] = {}  # (method, status class, handler) -> children
        for topic in topics:
            for per_topic in (self.published, self.publish_failures, self.broker_losses, self.republished):
                per_topic.labels(topic)

    async def measure(self, app: ASGIApp, handler: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Run `app` on the request; count its answer's status class and time it (a 5xx if it raises)."""
        start, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            method = scope["method"]
            key = (method, status // 100, handler)
            series = self._series.get(key)
            if series is None:  # labels() looks the children up under a lock: once per key, not per request
                series = self._series[key] = (
                    self.requests.labels(method, f"{status // 100}xx", handler),
                    self.latency.labels(method, handler),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - start)

    def expose(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    def close(self) -> None:
        """This worker is stopping: its live gauges leave the sums."""
        if multiprocess_dir():
            mp.mark_process_dead(os.getpid())


_LIVE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


def _mark_dead_workers(folder: Path) -> None:
    """Drop the live gauges of workers that died without marking themselves (kill -9)."""
    dead = {int(m[1]) for p in folder.glob("gauge_live*.db") if (m := _LIVE_FILE.match(p.name))}
    for pid in dead:
        if not psutil.pid_exists(pid):
            mp.mark_process_dead(pid, path=str(folder))


class HttpMetrics:
    """Pure ASGI middleware: counts every answer by route template, method and status class."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, excluded: frozenset[str] = frozenset({"/metrics"})) -> None:
        self.app, self.metrics, self.excluded = app, metrics, excluded
        self._handlers: dict[tuple[str, str], str] = {}  # (method, path) -> route template, for known routes

    def _handler(self, scope: Scope) -> str:
        key = (scope["method"], scope["path"])
        found = self._handlers.get(key)
        if found is None:
            found = "none"  # as the instrumentator: unmatched paths are not labelled one by one
            for route in scope["app"].router.routes:
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    found = route.path
                    break
            if found != "none" and "{" not in found:
                self._handlers[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = self._handler(scope)
        if handler in self.excluded:
            await self.app(scope, receive, send)
            return
        await self.metrics.measure(self.app, handler, scope, receive, send)


async def metrics_endpoint(request: Request) -> Response:
    return request.app.state.metrics.expose()
