"""The dashboard's read model: the lake's purchases and MongoDB's events in an in-memory DuckDB.

Asking MongoDB or Spark for a funnel over a million events on every refresh would take
seconds; the sync threads (`sync.py`) copy what is new in the stores every few seconds
instead, and every data call is one DuckDB query over these tables (milliseconds).
Definitions follow the analysis (`shopstream_analysis.sales`): a line's amount is
ItemCount x (ItemPrice - ItemDiscount), revenue sums line amounts, orders are distinct
OrderIds, ties are broken by identifier. Times are stored as UTC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from shopstream.contracts import EventName

EVENT_NAMES = tuple(e.value for e in EventName)  # from the contract
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24), "all": None}

SCHEMA = """
CREATE TABLE events (
    EventId   VARCHAR PRIMARY KEY,  -- a re-read event (sync overlap) is ignored
    UserId    VARCHAR NOT NULL,
    EventName VARCHAR NOT NULL,
    TimeStamp TIMESTAMPTZ NOT NULL
);
CREATE TABLE purchases (
    EventId     VARCHAR NOT NULL,
    OrderId     VARCHAR NOT NULL,
    UserId      VARCHAR NOT NULL,
    TimeStamp   TIMESTAMPTZ NOT NULL,
    IngestedAt  TIMESTAMPTZ NOT NULL,
    TotalPrice  DECIMAL(18, 2) NOT NULL,
    PaymentType VARCHAR NOT NULL,
    Items       BIGINT NOT NULL,
    Amount      DECIMAL(18, 2) NOT NULL  -- sum of the lines' amounts
);
CREATE TABLE lines (
    EventId    VARCHAR NOT NULL,
    OrderId    VARCHAR NOT NULL,
    UserId     VARCHAR NOT NULL,
    TimeStamp  TIMESTAMPTZ NOT NULL,
    ProductId  VARCHAR NOT NULL,
    ItemCount  BIGINT NOT NULL,
    LineAmount DECIMAL(18, 2) NOT NULL
);
"""


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _money(x: Any) -> float:
    return round(float(x or 0), 2)


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    """Run a statement to its end (DuckDB refuses a new statement while a result is unread)."""
    return con.execute(sql).fetchall()


class ReadModel:
    """One in-memory DuckDB database; each thread gets its own cursor (a connection to it)."""

    def __init__(self) -> None:
        self._db = duckdb.connect(":memory:")
        _run(self._db, "SET GLOBAL TimeZone = 'UTC'")
        _run(self._db, SCHEMA)
        self._local = threading.local()
        self._version = 0  # +1 at every change of the purchases
        self._sales: tuple[int, dict[str, Any]] | None = None
        self._sales_lock = threading.Lock()

    def _con(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._db.cursor()
        return con

    @contextmanager
    def _registered(self, name: str, table: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
        """This thread's connection, with `table` visible to it as `name` meanwhile."""
        con = self._con()
        con.register(name, table)
        try:
            yield con
        finally:
            con.unregister(name)

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self._con().execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- loading --------------------------------------------------------------------
    def add_events(self, batch: pa.Table) -> int:
        """Insert events (EventId, UserId, EventName, TimeStamp); copies are ignored."""
        if not batch.num_rows:
            return 0
        with self._registered("new_events", batch) as con:
            ((added,),) = _run(
                con, "INSERT OR IGNORE INTO events SELECT EventId, UserId, EventName, TimeStamp FROM new_events"
            )
        return added

    def add_purchases(self, batch: pa.Table) -> int:
        """Insert purchases as the streaming job writes them (PurchaseRecord columns, Products nested)."""
        if not batch.num_rows:
            return 0
        with self._registered("new_purchases", batch) as con:
            _run(con, "BEGIN")
            try:
                _run(
                    con,
                    """
                    CREATE OR REPLACE TEMP TABLE new_lines AS
                    SELECT EventId, OrderId, UserId, TimeStamp, l.ProductId AS ProductId,
                           l.ItemCount::BIGINT AS ItemCount,
                           (l.ItemCount * (l.ItemPrice - l.ItemDiscount))::DECIMAL(18, 2) AS LineAmount
                    FROM (SELECT EventId, OrderId, UserId, TimeStamp, UNNEST(Products) AS l FROM new_purchases)
                """,
                )
                _run(
                    con,
                    """
                    INSERT INTO purchases
                    SELECT p.EventId, p.OrderId, p.UserId, p.TimeStamp, p.IngestedAt, p.TotalPrice, p.PaymentType,
                           coalesce(s.Items, 0), coalesce(s.Amount, 0)
                    FROM new_purchases p LEFT JOIN (
                        SELECT EventId, sum(ItemCount) AS Items, sum(LineAmount) AS Amount
                        FROM new_lines GROUP BY EventId
                    ) s USING (EventId)
                """,
                )
                _run(con, "INSERT INTO lines SELECT * FROM new_lines")
                _run(con, "DROP TABLE new_lines")
                _run(con, "COMMIT")
                self._version += 1
            except BaseException:
                _run(con, "ROLLBACK")
                raise
        return batch.num_rows

    def counts(self) -> dict[str, int]:
        row = (
            self._con().execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM purchases)").fetchall()[0]
        )
        return {"events": row[0], "purchases": row[1]}

    # -- answers ----------------------------------------------------------------------
    def event_rates(self, as_of: datetime, minutes: int, bucket_s: int) -> dict[str, list[dict[str, Any]]]:
        """Events per second by EventName in `bucket_s` buckets over the last `minutes` (by TimeStamp)."""
        end = _utc(as_of)
        start = end - timedelta(minutes=minutes)
        buckets = [start + timedelta(seconds=bucket_s * i) for i in range(minutes * 60 // bucket_s)]
        rows = self._rows(
            """
            SELECT EventName, floor(epoch(TimeStamp - ?::TIMESTAMPTZ) / ?)::BIGINT AS b, count(*) AS n
            FROM events WHERE TimeStamp >= ? AND TimeStamp < ?
            GROUP BY ALL
        """,
            [start, bucket_s, start, end],
        )
        counts = {(r["EventName"], r["b"]): r["n"] for r in rows}
        names = sorted({r["EventName"] for r in rows} | set(EVENT_NAMES))
        return {
            name: [{"t": t, "per_s": round(counts.get((name, i), 0) / bucket_s, 3)} for i, t in enumerate(buckets)]
            for name in names
        }

    def purchases_per_minute(self, as_of: datetime, minutes: int) -> list[dict[str, Any]]:
        end = _utc(as_of)
        start = end - timedelta(minutes=minutes)
        rows = self._rows(
            """
            SELECT floor(epoch(TimeStamp - ?::TIMESTAMPTZ) / 60)::BIGINT AS m, count(*) AS n, sum(Amount) AS revenue
            FROM purchases WHERE TimeStamp >= ? AND TimeStamp < ?
            GROUP BY ALL
        """,
            [start, start, end],
        )
        by_minute = {r["m"]: r for r in rows}
        return [
            {
                "t": start + timedelta(minutes=m),
                "purchases": by_minute.get(m, {}).get("n", 0),
                "revenue": _money(by_minute.get(m, {}).get("revenue")),
            }
            for m in range(minutes)
        ]

    def funnel(self, as_of: datetime, window: str) -> list[dict[str, Any]]:
        """Users with PageVisited in the window; of them, with AddedBasket; of those, with a purchase."""
        span = WINDOWS[window]
        end = _utc(as_of)
        start = end - span if span is not None else datetime(1, 1, 1, tzinfo=UTC)
        row = (
            self._con()
            .execute(
                """
            WITH ev AS (SELECT UserId, EventName FROM events WHERE TimeStamp > ? AND TimeStamp <= ?),
                 visited AS (SELECT DISTINCT UserId FROM ev WHERE EventName = 'PageVisited'),
                 basket AS (SELECT DISTINCT UserId FROM ev WHERE EventName = 'AddedBasket'
                            AND UserId IN (SELECT UserId FROM visited)),
                 bought AS (SELECT DISTINCT UserId FROM purchases WHERE TimeStamp > ? AND TimeStamp <= ?
                            AND UserId IN (SELECT UserId FROM basket))
            SELECT (SELECT count(*) FROM visited), (SELECT count(*) FROM basket), (SELECT count(*) FROM bought)
        """,
                [start, end, start, end],
            )
            .fetchall()[0]
        )
        steps, first = [], row[0]
        for i, (name, users) in enumerate(zip(("PageVisited", "AddedBasket", "Purchased"), row, strict=True)):
            prev = row[i - 1] if i else None
            steps.append(
                {
                    "step": name,
                    "users": users,
                    "rate_from_previous": round(users / prev, 4) if prev else None,
                    "rate_from_first": round(users / first, 4) if first else None,
                }
            )
        return steps

    def sales(self, n: int) -> dict[str, Any]:
        """Totals, the n best sellers by revenue and by units, payment types. Computed once per
        change of the purchases (the lake's sync does it right after loading) and kept."""
        summary = self._sales_summary()
        products = summary["products"]
        return {
            **{k: summary[k] for k in ("purchases", "orders", "revenue", "payment_types")},
            "by_revenue": sorted(products, key=lambda r: (-r["Revenue"], r["ProductId"]))[:n],
            "by_units": sorted(products, key=lambda r: (-r["Units"], r["ProductId"]))[:n],
        }

    def warm(self) -> float:
        """Compute what `sales` keeps for the purchases as they are now; milliseconds it took."""
        t0 = time.perf_counter()
        self._sales_summary()
        return (time.perf_counter() - t0) * 1000

    def _sales_summary(self) -> dict[str, Any]:
        with self._sales_lock:  # one computation per version, however many callers
            version = self._version
            if self._sales is not None and self._sales[0] == version:
                return self._sales[1]
            totals = (
                self._con()
                .execute("SELECT count(*), count(DISTINCT OrderId), coalesce(sum(Amount), 0) FROM purchases")
                .fetchall()[0]
            )
            products = [
                {**r, "Units": int(r["Units"]), "Revenue": _money(r["Revenue"])}
                for r in self._rows("""
                SELECT ProductId, sum(ItemCount) AS Units, sum(LineAmount) AS Revenue, count(DISTINCT OrderId) AS Orders
                FROM lines GROUP BY ProductId
            """)
            ]
            payments = self._rows("""
                SELECT PaymentType, count(DISTINCT OrderId) AS Orders, sum(TotalPrice) AS Revenue
                FROM purchases GROUP BY PaymentType
            """)
            all_orders = sum(p["Orders"] for p in payments)
            payments = sorted(
                (
                    {
                        "PaymentType": p["PaymentType"],
                        "Orders": p["Orders"],
                        "Revenue": _money(p["Revenue"]),
                        "Share": round(p["Orders"] / all_orders, 4) if all_orders else 0.0,
                    }
                    for p in payments
                ),
                key=lambda p: (-p["Orders"], p["PaymentType"]),
            )
            summary = {
                "purchases": totals[0],
                "orders": totals[1],
                "revenue": _money(totals[2]),
                "products": products,
                "payment_types": payments,
            }
            self._sales = (version, summary)
            return summary

    def user_purchases(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._rows(
            """
            SELECT OrderId, TimeStamp, TotalPrice, PaymentType, Items FROM purchases
            WHERE UserId = ? ORDER BY TimeStamp DESC, OrderId LIMIT ?
        """,
            [user_id, limit],
        )
        return [{**r, "TotalPrice": _money(r["TotalPrice"]), "Items": int(r["Items"])} for r in rows]

    def newest_ingested(self) -> datetime | None:
        return self._con().execute("SELECT max(IngestedAt) FROM purchases").fetchall()[0][0]
