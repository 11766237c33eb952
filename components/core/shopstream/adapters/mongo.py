"""MongoDB client factory (pymongo)."""

from __future__ import annotations

from pymongo import MongoClient
from pymongo.database import Database

from shopstream.settings import MongoSettings


def mongo_client(cfg: MongoSettings, timeout_ms: int = 5000) -> MongoClient:
    return MongoClient(cfg.uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True)


def database(client: MongoClient, cfg: MongoSettings) -> Database:
    return client[cfg.database]
