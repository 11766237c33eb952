"""The FastAPI application factory (`uvicorn --factory shopstream_api.main:create_app`)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from shopstream.settings import Settings, get_settings

from .limits import MaxBodySize
from .metrics import ApiMetrics
from .publisher import KafkaPublisher
from .routes import health, ingest

log = logging.getLogger("shopstream_api")

DESCRIPTION = """
Validates shop events against the shopstream contracts and publishes them to Kafka
(`UserEvents`, `PurchasedItem`, keyed by UserId). A 2xx means the broker acknowledged
every record (acks=all). Invalid input gets 422 with the reasons per field and
publishes nothing; a body over the limit gets 413; an unreachable broker gets 503.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    registry = CollectorRegistry()
    metrics = ApiMetrics(registry)
    publisher = KafkaPublisher(settings.kafka, settings.api, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not await publisher.ready():  # not fatal: the API answers 503 until Kafka is back
            log.warning("Kafka at %s is not reachable yet", settings.kafka.bootstrap_servers)
        yield
        await publisher.close()

    app = FastAPI(title="shopstream ingestion API", version="1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.publisher, app.state.metrics = settings, publisher, metrics
    app.include_router(ingest.router)
    app.include_router(health.router)
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", tags=["health"]
    )
    app.add_middleware(MaxBodySize, max_bytes=settings.api.max_body_bytes,
                       on_reject=lambda: metrics.rejected.labels("body_too_large").inc())
    return app
