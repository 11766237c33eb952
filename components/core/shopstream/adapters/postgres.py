"""PostgreSQL engine factory (SQLAlchemy + psycopg2)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from shopstream.settings import PostgresSettings


def pg_engine(cfg: PostgresSettings, **kwargs) -> Engine:
    return create_engine(cfg.sqlalchemy_url, pool_pre_ping=True, **kwargs)


def pg_engine_unpooled(cfg: PostgresSettings, connect_timeout_s: int) -> Engine:
    """For a long-running reader that asks now and then (the dashboard): a connection per use.
    An idle pooled connection would keep a PostgreSQL told to stop politely (SIGTERM, its
    "smart" shutdown waits for every session to end) from ever stopping, so from coming back."""
    return create_engine(cfg.sqlalchemy_url, poolclass=NullPool, connect_args={"connect_timeout": connect_timeout_s})
