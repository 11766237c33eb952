"""The embedded stack as a whole: which servers, in which order."""

from __future__ import annotations

from shopstream.settings import Settings

from .airflow import AirflowService
from .apps import ApiService, DashboardService, GeneratorService
from .kafka import KafkaBroker
from .mongo import MongoServer
from .postgres import PostgresServer
from .s3 import SeaweedS3
from .service import Service
from .spark_cluster import SparkCluster
from .streaming import StreamingService

SERVICE_TYPES: tuple[type[Service], ...] = (KafkaBroker, MongoServer, PostgresServer, SeaweedS3)
APP_TYPES: tuple[type[Service], ...] = (
    ApiService,
    StreamingService,
    AirflowService,
    DashboardService,
    GeneratorService,
)


def services(
    settings: Settings, names: list[str] | None = None, apps: bool = False, spark_cluster: bool = False
) -> list[Service]:
    """The embedded servers (and with `apps`, the pipeline's components), in start order;
    `names` picks some of them (None: all; an empty list: none). With `spark_cluster`, the
    Spark standalone cluster too, before the components that use it (it runs only when asked
    for: `invoke up --spark-cluster`)."""
    cluster: tuple[type[Service], ...] = (SparkCluster,) if spark_cluster else ()
    all_ = [cls(settings) for cls in SERVICE_TYPES + cluster + (APP_TYPES if apps else ())]
    if names is None:
        return all_
    known = {s.name: s for s in all_}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown service {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]
