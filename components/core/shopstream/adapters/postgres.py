"""PostgreSQL engine factory (SQLAlchemy + psycopg2)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from shopstream.settings import PostgresSettings


def pg_engine(cfg: PostgresSettings, **kwargs) -> Engine:
    return create_engine(cfg.sqlalchemy_url, pool_pre_ping=True, **kwargs)
