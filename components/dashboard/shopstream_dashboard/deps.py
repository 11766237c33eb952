"""The dashboard's clients: one per store, built when the app starts, closed when it stops.

The app's lifespan builds them (`Clients.build`) and hands them to the loops and the routes,
which build none of their own; each comes from its adapter in `shopstream.adapters`. Every
client answers within the probe timeout (`probe_timeout_s`), so a store that hangs shows as
down instead of holding up the page, except the lake's reads, which carry whole Parquet files.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import httpx
import urllib3
from kafka import KafkaAdminClient, KafkaConsumer
from minio import Minio
from pymongo import MongoClient
from sqlalchemy import Engine

from shopstream.adapters.airflow import airflow_client
from shopstream.adapters.api import api_client
from shopstream.adapters.kafka import admin_client, kafka_consumer
from shopstream.adapters.mongo import Collections, collections, database, mongo_client
from shopstream.adapters.postgres import pg_engine_unpooled
from shopstream.adapters.s3 import s3_client
from shopstream.settings import Settings

CLIENT_ID = "shopstream-dashboard"


def probe_timeout_s(refresh_s: float) -> float:
    """How long a store may take to answer: half the refresh interval, within 1 to 3 s."""
    return max(1.0, min(3.0, refresh_s / 2))


class KafkaClients:
    """An admin client and a consumer, for offsets and the broker's health. Built on first use
    (kafka-python's constructors need a broker that answers, and give up after the probe timeout)
    and again after a failure; they are not thread-safe, so whoever uses them holds `lock`."""

    def __init__(self, settings: Settings, timeout_s: float) -> None:
        self.settings, self.timeout_ms = settings, max(int(timeout_s * 1000), 1000)
        self.lock = threading.Lock()
        self._clients: tuple[KafkaAdminClient, KafkaConsumer] | None = None

    def get(self) -> tuple[KafkaAdminClient, KafkaConsumer]:
        if self._clients is None:
            cfg, ms = self.settings.kafka, self.timeout_ms
            self._clients = (
                admin_client(cfg, ms, client_id=CLIENT_ID, bootstrap_timeout_ms=ms),
                kafka_consumer(cfg, client_id=CLIENT_ID, request_timeout_ms=ms, bootstrap_timeout_ms=ms),
            )
        return self._clients

    def drop(self) -> None:
        """After a failure: the next `get` builds new clients."""
        if self._clients is not None:
            for c in self._clients:
                with contextlib.suppress(Exception):  # it is being thrown away
                    c.close()
        self._clients = None


@dataclass
class Clients:
    mongo: MongoClient
    pg: Engine  # a connection per use: see pg_engine_unpooled
    s3: Minio
    kafka: KafkaClients
    api: httpx.Client  # the ingestion API's /readyz and /metrics
    airflow: httpx.Client
    timeout_s: float

    @classmethod
    def build(cls, settings: Settings) -> Clients:
        timeout = probe_timeout_s(settings.dashboard.refresh_s)
        # the lake's reads carry whole files: a longer read timeout and two retries
        lake_http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=20),
            maxsize=10,
            retries=urllib3.Retry(total=2, backoff_factor=0.2),
        )
        return cls(
            mongo=mongo_client(settings.mongo, timeout_ms=int(timeout * 1000)),
            pg=pg_engine_unpooled(settings.postgres, connect_timeout_s=int(timeout)),
            s3=s3_client(settings.s3, http_client=lake_http),
            kafka=KafkaClients(settings, timeout),
            api=api_client(settings.api, timeout_s=timeout),
            airflow=airflow_client(settings.airflow, timeout_s=timeout),
            timeout_s=timeout,
        )

    def collections(self, settings: Settings) -> Collections:
        return collections(database(self.mongo, settings.mongo), settings.batch)

    def close(self) -> None:
        self.kafka.drop()  # not under its lock: a probe still waiting for the broker must not hold up the stop
        self.api.close()
        self.airflow.close()
        self.mongo.close()
        self.pg.dispose()
