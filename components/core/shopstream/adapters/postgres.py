"""PostgreSQL engine factory (SQLAlchemy + psycopg2), the database's creation and its health check."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from shopstream.settings import PostgresSettings

MAINTENANCE_DB = "postgres"  # there before ours is: where the health check and CREATE DATABASE connect


def pg_engine(cfg: PostgresSettings, **kwargs) -> Engine:
    return create_engine(cfg.sqlalchemy_url, pool_pre_ping=True, **kwargs)


def pg_engine_unpooled(cfg: PostgresSettings, connect_timeout_s: int, database: str | None = None) -> Engine:
    """For a long-running reader that asks now and then (the dashboard): a connection per use.
    An idle pooled connection would keep a PostgreSQL told to stop politely (SIGTERM, its
    "smart" shutdown waits for every session to end) from ever stopping, so from coming back.
    `database`: another database of the server than the settings' one."""
    url = cfg.model_copy(update={"database": database}).sqlalchemy_url if database else cfg.sqlalchemy_url
    return create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": connect_timeout_s})


def pg_health(engine: Engine) -> str:
    """The server answers a query (raises when it does not): `invoke status` and the dashboard."""
    with engine.connect() as conn:
        if conn.execute(text("SELECT 1")).scalar() != 1:
            raise RuntimeError("SELECT 1 did not answer 1")
    return "SELECT 1 ok"


def ensure_database(cfg: PostgresSettings, connect_timeout_s: int = 2) -> bool:
    """Create the settings' database if missing; True when it was created now."""
    engine = pg_engine_unpooled(cfg, connect_timeout_s, database=MAINTENANCE_DB)
    try:
        # CREATE DATABASE cannot run in a transaction
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": cfg.database}).first():
                return False
            conn.execute(text(f"CREATE DATABASE {conn.dialect.identifier_preparer.quote(cfg.database)}"))
            return True
    finally:
        engine.dispose()
