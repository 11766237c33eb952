"""The FastAPI application factory (`uvicorn --factory shopstream_api.main:create_app`)."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI

from shopstream.settings import Settings, get_settings

from .app import IngestApi
from .auth import Authenticator
from .client import ClientIdentity
from .ingestor import Ingestor
from .journal import Journal
from .limits import MaxBodySize
from .metrics import ApiMetrics, HttpMetrics, metrics_endpoint
from .publisher import KafkaPublisher
from .routes import health, ingest, schemas
from .verifier import Verifier

log = logging.getLogger("shopstream_api")

DESCRIPTION = """
Validates shop events against the shopstream contracts and publishes them to Kafka
(`UserEvents`, `PurchasedItem`, keyed by UserId). A 2xx means the broker acknowledged
every record (acks=all) and the API journaled it on its own disk (it publishes again any
record the broker later turns out to have lost). Invalid input gets 422 with the reasons per field and
publishes nothing, as does malformed JSON (400) or a Content-Type that is not JSON (415); a body
over the limit gets 413; an unreachable broker gets 503.

Write keys: send `Authorization: Bearer <key>`. Where keys are required (by default when the API
listens beyond loopback) a request without one gets 401, as does an unknown key wherever it is sent;
a revoked key gets 403, a key over its rate 429 with Retry-After. Records carry the key's name as Source.
"""


PR_SET_PDEATHSIG = 1  # prctl(2)


def _end_with_the_master() -> None:
    """In a worker of `uvicorn --workers N`: be sent SIGTERM when the master process dies.

    A master killed with SIGKILL cannot stop its workers; they would go on holding the port,
    unsupervised, and the master the supervisor starts again could never bind it."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return  # one process (--workers 1), or no prctl here
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent.pid:  # it died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def create_app(settings: Settings | None = None) -> IngestApi:
    _end_with_the_master()
    settings = settings or get_settings()
    metrics = ApiMetrics(settings.kafka.topics)
    publisher = KafkaPublisher(settings.kafka, settings.api, metrics)
    journal = Journal(settings)
    verifier = Verifier(settings, journal, publisher, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(journal.open)
        checks = asyncio.create_task(verifier.run()) if journal.enabled else None
        if not await publisher.ready():  # not fatal: the API answers 503 until Kafka is back
            log.warning("Kafka at %s is not reachable yet", settings.kafka.bootstrap_servers)
        # what start-up made (modules, classes, the app: about 80,000 objects) lives as long as
        # the process; left to the collector, each full collection under load walked them all again
        gc.freeze()
        yield
        if checks is not None:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
        await verifier.close()
        await publisher.close()
        journal.close()
        metrics.close()

    app = IngestApi(
        metrics=metrics,
        max_body_bytes=settings.api.max_body_bytes,
        title="shopstream ingestion API",
        version="1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings, app.state.publisher, app.state.metrics = settings, publisher, metrics
    app.state.ingestor, app.state.journal = Ingestor(publisher, journal), journal
    app.state.client = ClientIdentity(settings.api)
    app.state.auth = Authenticator(settings, metrics)
    app.include_router(ingest.router)
    app.include_router(health.router)
    app.include_router(schemas.router)
    app.add_api_route("/metrics", metrics_endpoint, tags=["health"], summary="Prometheus metrics (all workers)")
    app.add_middleware(HttpMetrics, metrics=metrics)
    app.add_middleware(
        MaxBodySize,
        max_bytes=settings.api.max_body_bytes,
        on_reject=lambda: metrics.rejected.labels("body_too_large").inc(),
    )
    return app
