"""The dashboard's read model: rollups of MongoDB's events and the lake's purchases in an on-disk DuckDB.

Asking MongoDB or Spark for a funnel over millions of events on every refresh would take
seconds; the sync threads (`sync.py`) fold what is new in the stores into this database
every few seconds instead, and every data call is one DuckDB query over small tables.

Raw events are not kept. Each new event adds to rollups whose size does not grow with the
history: per second x EventName counts over the longest activity window (the activity chart),
per user the newest PageVisited and AddedBasket time (the funnel), events per place (country,
region, city), and per user the newest event's enrichment (browser, device, city: the user
lookup) with the users per browser x device it adds up to (the shares). Purchases are kept on
disk (the user lookup lists them) with their rollups updated as they arrive: sales per product,
per payment type and per place, and per user the newest purchase (the funnel).

Beside the rollups, copies of small tables the syncs replace as a whole every few seconds
(`SNAPSHOTS`, their columns the contracts' fields): PostgreSQL's products and customers (the
names and categories shown wherever a product appears, a customer's signup and home), and
MongoDB's session day sums and product engagement (the sessions panel; the batch's `sessions`
task keeps them exact). A product not in the copy shows as its ProductId, in category "unknown".

Bots (`Enrichment.IsBot`, by the user agent) are counted apart in every rollup but the activity
chart's (which shows the traffic as it came): the funnel, the sales and the places leave them
out unless asked (`include_bots`), so their share can be shown without skewing the shop's
figures. An event or purchase stored before enrichment has no `Enrichment`: it counts as
"unknown" everywhere, and not as a bot.
The database lives in a file (`DashboardSettings.read_model`) with the syncs' cursors in the
same transactions as the rollups, so a restart resumes where it stopped, and DuckDB's memory
limit (`memory_limit_mb`) bounds the RAM whatever the history.

Counting stays exact: an event the sync reads twice is recognised by its EventId in
`recent_ids` (the events stored since the settled cursor, the only ones a sync can read
again), an order seen before (same OrderId) is not counted again in the distinct-order
figures, and an event stamped ahead of the clock waits in `early_steps` until its time.
Definitions follow the analysis (`shopstream_analysis.sales`): a line's amount is
ItemCount x (ItemPrice - ItemDiscount), revenue sums line amounts, orders are distinct
OrderIds (an order is a bot's or not by its purchases), ties are broken by identifier.
Times are stored as UTC.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from pydantic import BaseModel

from shopstream.contracts import EventName
from shopstream.contracts.dimensions import Customer, ProductInfo
from shopstream.contracts.enrichment import UNKNOWN, Enrichment
from shopstream.contracts.sessions import ProductEngagement, SessionDay

EVENT_NAMES = tuple(e.value for e in EventName)  # from the contract
FUNNEL_EVENTS = ("PageVisited", "AddedBasket")
WINDOWS = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24), "all": None}
ACTIVITY_MAX_MINUTES = 180  # the longest activity chart; older per-second counts are dropped
# per-second counts are kept this long: a minute past the longest chart, so a chart whose `as_of`
# is a little before a sync's clock (a whole second, or a sync that committed just before the
# chart's query) still finds every second it asks for
ACTIVITY_KEPT = timedelta(minutes=ACTIVITY_MAX_MINUTES + 1)
VERSION = "5"  # of the tables below: a file of another version is rebuilt from the stores
# the stores' Enrichment (a MongoDB subdocument, a lake struct column) as the syncs hand it over
ENRICHMENT = pa.struct(
    [(name, pa.bool_() if f.annotation is bool else pa.string()) for name, f in Enrichment.model_fields.items()]
)

META_DDL = "CREATE TABLE IF NOT EXISTS meta (Key VARCHAR PRIMARY KEY, Value VARCHAR NOT NULL)"
SCHEMA = """
-- MongoDB's events, rolled up; the sync's cursor is one row, set once a first full read has ended
CREATE TABLE IF NOT EXISTS events_cursor (
    Settled TIMESTAMPTZ,     -- every event stored (StoredAt) at or before it is counted
    Newest  TIMESTAMPTZ,     -- the newest StoredAt counted
    Events  BIGINT NOT NULL  -- events counted
);
CREATE TABLE IF NOT EXISTS recent_ids (EventId VARCHAR NOT NULL, StoredAt TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS event_seconds (
    Sec TIMESTAMPTZ NOT NULL, EventName VARCHAR NOT NULL, N BIGINT NOT NULL, PRIMARY KEY (Sec, EventName)
);
CREATE TABLE IF NOT EXISTS user_steps (
    UserId VARCHAR NOT NULL, EventName VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, Last TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (UserId, EventName, IsBot)
);
CREATE TABLE IF NOT EXISTS early_steps (
    UserId VARCHAR NOT NULL, EventName VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, TimeStamp TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS place_events (
    Country VARCHAR NOT NULL, Region VARCHAR NOT NULL, City VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL,
    Events BIGINT NOT NULL, PRIMARY KEY (Country, Region, City, IsBot)
);
-- per user, the newest event's enrichment (newest by TimeStamp, then EventId), and what the users add up to
CREATE TABLE IF NOT EXISTS user_agents (
    UserId VARCHAR PRIMARY KEY, Last TIMESTAMPTZ NOT NULL, LastId VARCHAR NOT NULL,
    Browser VARCHAR NOT NULL, Os VARCHAR NOT NULL, Device VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL,
    Country VARCHAR NOT NULL, Region VARCHAR NOT NULL, City VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_users (
    Browser VARCHAR NOT NULL, Device VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, Users BIGINT NOT NULL,
    PRIMARY KEY (Browser, Device, IsBot)
);
-- the lake's purchases and their sales rollups
CREATE TABLE IF NOT EXISTS lake_files (Key VARCHAR PRIMARY KEY);
CREATE TABLE IF NOT EXISTS purchases (
    EventId     VARCHAR NOT NULL,
    OrderId     VARCHAR NOT NULL,
    UserId      VARCHAR NOT NULL,
    TimeStamp   TIMESTAMPTZ NOT NULL,
    IngestedAt  TIMESTAMPTZ NOT NULL,
    TotalPrice  DECIMAL(18, 2) NOT NULL,
    PaymentType VARCHAR NOT NULL,
    Items       BIGINT NOT NULL,
    Amount      DECIMAL(18, 2) NOT NULL,  -- sum of the lines' amounts
    IsBot       BOOLEAN NOT NULL,
    Country     VARCHAR NOT NULL,
    Region      VARCHAR NOT NULL,
    City        VARCHAR NOT NULL,
    ProductIds  VARCHAR[] NOT NULL  -- its lines' products, in line order (the user lookup names them)
);
-- the user lookup: a user's few purchases found by the index, not by a scan of them all
CREATE INDEX IF NOT EXISTS purchases_user ON purchases (UserId);
CREATE TABLE IF NOT EXISTS lines (
    EventId    VARCHAR NOT NULL,
    OrderId    VARCHAR NOT NULL,
    UserId     VARCHAR NOT NULL,
    TimeStamp  TIMESTAMPTZ NOT NULL,
    ProductId  VARCHAR NOT NULL,
    ItemCount  BIGINT NOT NULL,
    LineAmount DECIMAL(18, 2) NOT NULL,
    IsBot      BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS user_bought (
    UserId VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, Last TIMESTAMPTZ NOT NULL, PRIMARY KEY (UserId, IsBot)
);
CREATE TABLE IF NOT EXISTS early_bought (
    UserId VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, TimeStamp TIMESTAMPTZ NOT NULL
);
-- one row for the bots' purchases, one for the others'
CREATE TABLE IF NOT EXISTS sales_totals (
    IsBot BOOLEAN PRIMARY KEY, Purchases BIGINT NOT NULL, Orders BIGINT NOT NULL, Revenue DECIMAL(18, 2) NOT NULL
);
CREATE TABLE IF NOT EXISTS product_sales (
    ProductId VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, Units BIGINT NOT NULL, Revenue DECIMAL(18, 2) NOT NULL,
    Orders BIGINT NOT NULL, PRIMARY KEY (ProductId, IsBot)
);
CREATE TABLE IF NOT EXISTS payment_sales (
    PaymentType VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL, Orders BIGINT NOT NULL, Revenue DECIMAL(18, 2) NOT NULL,
    PRIMARY KEY (PaymentType, IsBot)
);
CREATE TABLE IF NOT EXISTS place_sales (
    Country VARCHAR NOT NULL, Region VARCHAR NOT NULL, City VARCHAR NOT NULL, IsBot BOOLEAN NOT NULL,
    Purchases BIGINT NOT NULL, Revenue DECIMAL(18, 2) NOT NULL, PRIMARY KEY (Country, Region, City, IsBot)
);
"""
EVENT_TABLES = (
    "events_cursor",
    "recent_ids",
    "event_seconds",
    "user_steps",
    "early_steps",
    "place_events",
    "user_agents",
    "agent_users",
)
LAKE_TABLES = (
    "lake_files",
    "purchases",
    "lines",
    "user_bought",
    "early_bought",
    "sales_totals",
    "product_sales",
    "payment_sales",
    "place_sales",
)
# copies of small tables, replaced as a whole by their syncs: table -> (contract, key field)
SNAPSHOTS: dict[str, tuple[type[BaseModel], str]] = {
    "products": (ProductInfo, "ProductId"),
    "customers": (Customer, "UserId"),
    "session_days": (SessionDay, "Day"),
    "product_engagement": (ProductEngagement, "ProductId"),
}
_TYPES = {  # a contract field's annotation -> (DuckDB, Arrow) types
    str: ("VARCHAR", pa.string()),
    int: ("BIGINT", pa.int64()),
    Decimal: ("DECIMAL(18, 2)", pa.decimal128(18, 2)),
    date: ("DATE", pa.date32()),
}


def _snapshot_fields(model: type[BaseModel]) -> dict[str, tuple[str, pa.DataType]]:
    return {name: _TYPES[f.annotation] for name, f in model.model_fields.items()}  # type: ignore[index]


def snapshot_ddl() -> str:
    """The snapshot tables' DDL, one column per contract field."""
    return "\n".join(
        f"CREATE TABLE IF NOT EXISTS {table} ("
        + ", ".join(f"{name} {sql} NOT NULL" for name, (sql, _) in _snapshot_fields(model).items())
        + f", PRIMARY KEY ({key}));"
        for table, (model, key) in SNAPSHOTS.items()
    )


SNAPSHOT_TABLES = tuple(SNAPSHOTS)
_FUNNEL_IN = ", ".join(f"'{n}'" for n in FUNNEL_EVENTS)
# a row's enrichment fields, "unknown" (and not a bot) where it has none: stored before enrichment
_ENRICHED = ", ".join(
    f"coalesce(Enrichment.{name}, {'false' if t == pa.bool_() else repr(UNKNOWN)}) AS {name}"
    for name, t in zip(ENRICHMENT.names, (f.type for f in ENRICHMENT), strict=True)
)
# keeps the bots out unless the (one) parameter is true
_BOTS = "(? OR NOT IsBot)"


# a product's name and category in a query joining `products p`: its ProductId and "unknown" when not there
_NAMED = f"coalesce(p.Name, ProductId) AS Name, coalesce(p.Category, '{UNKNOWN}') AS Category"


def _nameless(product_id: str) -> dict[str, str]:
    return {"Name": product_id, "Category": UNKNOWN}


def _name_of(row: dict[str, Any]) -> dict[str, str]:
    return {"Name": row["Name"], "Category": row["Category"]}


def _utc(ts: datetime) -> datetime:
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def _money(x: Any) -> float:
    return round(float(x or 0), 2)


def with_enrichment(table: pa.Table) -> pa.Table:
    """`table` with an `Enrichment` column: all null (unknown) when it has none (read before enrichment)."""
    if "Enrichment" in table.column_names:
        return table
    return table.append_column("Enrichment", pa.nulls(table.num_rows, ENRICHMENT))


def _share(part: float, whole: float) -> float:
    return round(part / whole, 4) if whole else 0.0


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple]:
    """Run a statement to its end (DuckDB refuses a new statement while a result is unread)."""
    return con.execute(sql, params or []).fetchall()


class ReadModel:
    """One DuckDB database (a file, or in memory for `path=None`); each thread gets its own cursor.

    `sources` names the stores the rollups were read from: a file made from other stores (or
    by another version of these tables) is dropped and built again."""

    def __init__(self, path: Path | None = None, sources: str = "", memory_limit_mb: int = 256) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = duckdb.connect(str(path) if path else ":memory:")
        _run(self._db, "SET GLOBAL TimeZone = 'UTC'")
        _run(self._db, f"SET memory_limit = '{int(memory_limit_mb)}MB'")
        _run(self._db, "SET preserve_insertion_order = false")
        _run(self._db, META_DDL)
        ddl = SCHEMA + snapshot_ddl()
        # the tables' shape is in the stamp: a file made by another version is rebuilt, whether
        # VERSION was raised or a contract behind a snapshot table changed
        stamp = f"{VERSION}|{hashlib.sha256(ddl.encode()).hexdigest()[:12]}|{sources}"
        found = _run(self._db, "SELECT Value FROM meta WHERE Key = 'stamp'")
        if found and found[0][0] != stamp:
            _run(self._db, "".join(f"DROP TABLE IF EXISTS {t};" for t in EVENT_TABLES + LAKE_TABLES + SNAPSHOT_TABLES))
        _run(self._db, ddl)
        _run(self._db, "INSERT OR REPLACE INTO meta VALUES ('stamp', ?)", [stamp])
        if not _run(self._db, "SELECT 1 FROM events_cursor WHERE Settled IS NOT NULL"):  # no first read ended
            self._clear(EVENT_TABLES)
        if not _run(self._db, "SELECT 1 FROM sales_totals"):
            self._clear(LAKE_TABLES)
        self._local = threading.local()

    def _clear(self, tables: tuple[str, ...]) -> None:
        _run(self._db, "BEGIN")
        for t in tables:
            _run(self._db, f"DELETE FROM {t}")
        if "events_cursor" in tables:
            _run(self._db, "INSERT INTO events_cursor VALUES (NULL, NULL, 0)")
        if "sales_totals" in tables:
            _run(self._db, "INSERT INTO sales_totals VALUES (false, 0, 0, 0), (true, 0, 0, 0)")
        _run(self._db, "COMMIT")

    def get_meta(self, key: str) -> str | None:
        rows = _run(self._con(), "SELECT Value FROM meta WHERE Key = ?", [key])
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            _run(self._con(), "DELETE FROM meta WHERE Key = ?", [key])
        else:
            _run(self._con(), "INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def reset_events(self) -> None:
        """Forget every event (MongoDB's collection was made again): the next sync reads them all."""
        self._clear(EVENT_TABLES)

    def reset_purchases(self) -> None:
        """Forget every purchase (the lake's files were removed): the next sync reads them all."""
        self._clear(LAKE_TABLES)

    def close(self) -> None:
        self._db.close()

    def _con(self) -> duckdb.DuckDBPyConnection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._db.cursor()
        return con

    @contextmanager
    def _transaction(self, **tables: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
        """This thread's connection in a transaction, with `tables` visible to it by name meanwhile."""
        con = self._con()
        for name, table in tables.items():
            con.register(name, table)
        try:
            _run(con, "BEGIN")
            try:
                yield con
                _run(con, "COMMIT")
            except BaseException:
                _run(con, "ROLLBACK")
                raise
        finally:
            for name in tables:
                con.unregister(name)

    def _rows(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cur = self._con().execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- events -----------------------------------------------------------------------
    def events_cursor(self) -> tuple[datetime, datetime | None] | None:
        """(settled, newest) of the last sync, or None before a first full read has ended."""
        rows = _run(self._con(), "SELECT Settled, Newest FROM events_cursor WHERE Settled IS NOT NULL")
        return (rows[0][0], rows[0][1]) if rows else None

    def add_events(
        self,
        batch: pa.Table,
        now: datetime,
        settled: datetime,
        cursor: tuple[datetime, datetime | None] | None = None,
    ) -> int:
        """Fold events (EventId, UserId, EventName, TimeStamp, StoredAt, and Enrichment if they have
        it) into the rollups; returns how many were new. Those stored after `settled` are remembered
        by EventId (a later sync may read them again); with `cursor`, the sync's (settled, newest) is
        saved in the same transaction and what it makes unnecessary is dropped."""
        now = _utc(now)
        horizon = now - ACTIVITY_KEPT
        with self._transaction(read_events=with_enrichment(batch)) as con:
            _run(
                con,
                f"""
                CREATE OR REPLACE TEMP TABLE fresh AS
                SELECT * FROM (SELECT DISTINCT ON (EventId) EventId, UserId, EventName, TimeStamp, StoredAt, {_ENRICHED}
                               FROM read_events) r
                WHERE NOT EXISTS (SELECT 1 FROM recent_ids k WHERE k.EventId = r.EventId)
            """,
            )
            ((added,),) = _run(con, "SELECT count(*) FROM fresh")
            _run(
                con,
                """
                INSERT INTO event_seconds
                SELECT date_trunc('second', TimeStamp), EventName, count(*) FROM fresh WHERE TimeStamp >= ? GROUP BY ALL
                ON CONFLICT DO UPDATE SET N = N + EXCLUDED.N
            """,
                [horizon],
            )
            _run(
                con,
                f"INSERT INTO early_steps SELECT UserId, EventName, IsBot, TimeStamp FROM fresh "
                f"WHERE EventName IN ({_FUNNEL_IN}) AND TimeStamp > ?",
                [now],
            )
            _run(
                con,
                f"""
                INSERT INTO user_steps
                SELECT UserId, EventName, IsBot, max(TimeStamp) FROM (
                    SELECT UserId, EventName, IsBot, TimeStamp FROM fresh
                    WHERE EventName IN ({_FUNNEL_IN}) AND TimeStamp <= ?
                    UNION ALL SELECT * FROM early_steps WHERE TimeStamp <= ?
                ) GROUP BY ALL
                ON CONFLICT DO UPDATE SET Last = greatest(Last, EXCLUDED.Last)
            """,
                [now, now],
            )
            _run(con, "DELETE FROM early_steps WHERE TimeStamp <= ?", [now])
            _run(
                con,
                """
                INSERT INTO place_events SELECT Country, Region, City, IsBot, count(*) FROM fresh GROUP BY ALL
                ON CONFLICT DO UPDATE SET Events = Events + EXCLUDED.Events
            """,
            )
            self._fold_agents(con)
            _run(con, "INSERT INTO recent_ids SELECT EventId, StoredAt FROM fresh WHERE StoredAt > ?", [settled])
            _run(con, "DROP TABLE fresh")
            _run(con, "UPDATE events_cursor SET Events = Events + ?", [added])
            if cursor is not None:
                _run(con, "UPDATE events_cursor SET Settled = ?, Newest = ?", [cursor[0], cursor[1]])
                _run(con, "DELETE FROM recent_ids WHERE StoredAt <= ?", [cursor[0]])
                _run(con, "DELETE FROM event_seconds WHERE Sec < ?", [horizon])
        return int(added)

    @staticmethod
    def _fold_agents(con: duckdb.DuckDBPyConnection) -> None:
        """Each user's newest event in `fresh` (by TimeStamp, then EventId) takes the place of the one
        in `user_agents` if it is newer, and `agent_users` moves the user from the browser x device
        they had to the new one: the shares' counts follow the users, whatever the events."""
        _run(
            con,
            """
            CREATE OR REPLACE TEMP TABLE seen AS
            SELECT n.*, o.UserId IS NOT NULL AS Known, o.Browser AS OldBrowser, o.Device AS OldDevice,
                   o.IsBot AS OldIsBot
            FROM (SELECT DISTINCT ON (UserId) UserId, TimeStamp AS Last, EventId AS LastId,
                         Browser, Os, Device, IsBot, Country, Region, City
                  FROM fresh ORDER BY UserId, TimeStamp DESC, EventId DESC) n
            LEFT JOIN user_agents o USING (UserId)
            WHERE o.UserId IS NULL OR n.Last > o.Last OR (n.Last = o.Last AND n.LastId > o.LastId)
        """,
        )
        _run(
            con,
            """
            INSERT INTO agent_users
            SELECT Browser, Device, IsBot, sum(d)::BIGINT FROM (
                SELECT Browser, Device, IsBot, 1 AS d FROM seen
                UNION ALL SELECT OldBrowser, OldDevice, OldIsBot, -1 FROM seen WHERE Known
            ) GROUP BY ALL
            ON CONFLICT DO UPDATE SET Users = Users + EXCLUDED.Users
        """,
        )
        _run(con, "DELETE FROM agent_users WHERE Users = 0")
        _run(
            con,
            """
            INSERT INTO user_agents
            SELECT UserId, Last, LastId, Browser, Os, Device, IsBot, Country, Region, City FROM seen
            ON CONFLICT DO UPDATE SET Last = EXCLUDED.Last, LastId = EXCLUDED.LastId, Browser = EXCLUDED.Browser,
                Os = EXCLUDED.Os, Device = EXCLUDED.Device, IsBot = EXCLUDED.IsBot, Country = EXCLUDED.Country,
                Region = EXCLUDED.Region, City = EXCLUDED.City
        """,
        )
        _run(con, "DROP TABLE seen")

    # -- purchases ----------------------------------------------------------------------
    def lake_files(self) -> set[str]:
        return {k for (k,) in _run(self._con(), "SELECT Key FROM lake_files")}

    def add_purchases(self, batch: pa.Table | None, files: list[str]) -> int:
        """Add purchases as the streaming job writes them (PurchaseRecord columns, Products nested,
        Enrichment if the file has it), read from `files`, and update the sales rollups, in one
        transaction: a file is counted once."""
        new_files = pa.table({"Key": pa.array(files, pa.string())})
        if batch is None or not batch.num_rows:
            with self._transaction(new_files=new_files) as con:
                _run(con, "INSERT OR IGNORE INTO lake_files SELECT Key FROM new_files")
            return 0
        with self._transaction(read_purchases=with_enrichment(batch), new_files=new_files) as con:
            _run(
                con,
                f"CREATE OR REPLACE TEMP TABLE new_purchases AS SELECT * EXCLUDE (Enrichment), {_ENRICHED} "
                "FROM read_purchases",
            )
            _run(
                con,
                """
                CREATE OR REPLACE TEMP TABLE new_lines AS
                SELECT EventId, OrderId, UserId, TimeStamp, l.ProductId AS ProductId,
                       l.ItemCount::BIGINT AS ItemCount,
                       (l.ItemCount * (l.ItemPrice - l.ItemDiscount))::DECIMAL(18, 2) AS LineAmount, IsBot
                FROM (SELECT EventId, OrderId, UserId, TimeStamp, IsBot, UNNEST(Products) AS l FROM new_purchases)
            """,
            )
            _run(
                con,
                """
                CREATE OR REPLACE TEMP TABLE new_p AS
                SELECT p.EventId, p.OrderId, p.UserId, p.TimeStamp, p.IngestedAt,
                       p.TotalPrice::DECIMAL(18, 2) AS TotalPrice, p.PaymentType,
                       coalesce(s.Items, 0)::BIGINT AS Items, coalesce(s.Amount, 0)::DECIMAL(18, 2) AS Amount,
                       p.IsBot, p.Country, p.Region, p.City,
                       coalesce(list_transform(p.Products, lambda x: x.ProductId), []::VARCHAR[]) AS ProductIds
                FROM new_purchases p LEFT JOIN (
                    SELECT EventId, sum(ItemCount) AS Items, sum(LineAmount) AS Amount FROM new_lines GROUP BY EventId
                ) s USING (EventId)
            """,
            )
            # the orders (and order x product, order x payment type) already counted, bots' and
            # others' apart: a scan of one column probing the batch's few OrderIds
            _run(
                con,
                """
                CREATE OR REPLACE TEMP TABLE old_orders AS
                SELECT DISTINCT OrderId, PaymentType, IsBot FROM purchases WHERE OrderId IN (SELECT OrderId FROM new_p)
            """,
            )
            _run(
                con,
                """
                CREATE OR REPLACE TEMP TABLE old_pairs AS
                SELECT DISTINCT ProductId, OrderId, IsBot FROM lines WHERE OrderId IN (SELECT OrderId FROM new_p)
            """,
            )
            _run(
                con,
                """
                INSERT INTO sales_totals
                SELECT p.IsBot, count(*), count(DISTINCT p.OrderId) FILTER (
                           WHERE p.OrderId NOT IN (SELECT OrderId FROM old_orders o WHERE o.IsBot = p.IsBot)
                       ), coalesce(sum(p.Amount), 0)
                FROM new_p p GROUP BY p.IsBot
                ON CONFLICT DO UPDATE SET Purchases = Purchases + EXCLUDED.Purchases, Orders = Orders + EXCLUDED.Orders,
                                          Revenue = Revenue + EXCLUDED.Revenue
            """,
            )
            _run(
                con,
                """
                INSERT INTO product_sales
                SELECT l.ProductId, l.IsBot, sum(l.ItemCount), sum(l.LineAmount),
                       count(DISTINCT l.OrderId) FILTER (WHERE o.OrderId IS NULL)
                FROM new_lines l LEFT JOIN old_pairs o USING (ProductId, OrderId, IsBot)
                GROUP BY l.ProductId, l.IsBot
                ON CONFLICT DO UPDATE SET Units = Units + EXCLUDED.Units, Revenue = Revenue + EXCLUDED.Revenue,
                                          Orders = Orders + EXCLUDED.Orders
            """,
            )
            _run(
                con,
                """
                INSERT INTO payment_sales
                SELECT p.PaymentType, p.IsBot, count(DISTINCT p.OrderId) FILTER (WHERE o.OrderId IS NULL),
                       sum(p.TotalPrice)
                FROM new_p p LEFT JOIN old_orders o USING (PaymentType, OrderId, IsBot)
                GROUP BY p.PaymentType, p.IsBot
                ON CONFLICT DO UPDATE SET Orders = Orders + EXCLUDED.Orders, Revenue = Revenue + EXCLUDED.Revenue
            """,
            )
            _run(
                con,
                """
                INSERT INTO place_sales
                SELECT Country, Region, City, IsBot, count(*), sum(Amount) FROM new_p GROUP BY ALL
                ON CONFLICT DO UPDATE SET Purchases = Purchases + EXCLUDED.Purchases,
                                          Revenue = Revenue + EXCLUDED.Revenue
            """,
            )
            now = datetime.now(UTC)
            _run(con, "INSERT INTO early_bought SELECT UserId, IsBot, TimeStamp FROM new_p WHERE TimeStamp > ?", [now])
            _run(
                con,
                """
                INSERT INTO user_bought
                SELECT UserId, IsBot, max(TimeStamp) FROM (
                    SELECT UserId, IsBot, TimeStamp FROM new_p WHERE TimeStamp <= ?
                    UNION ALL SELECT * FROM early_bought WHERE TimeStamp <= ?
                ) GROUP BY UserId, IsBot
                ON CONFLICT DO UPDATE SET Last = greatest(Last, EXCLUDED.Last)
            """,
                [now, now],
            )
            _run(con, "DELETE FROM early_bought WHERE TimeStamp <= ?", [now])
            _run(con, "INSERT INTO purchases SELECT * FROM new_p")
            _run(con, "INSERT INTO lines SELECT * FROM new_lines")
            _run(con, "INSERT OR IGNORE INTO lake_files SELECT Key FROM new_files")
            for t in ("new_purchases", "new_lines", "new_p", "old_orders", "old_pairs"):
                _run(con, f"DROP TABLE {t}")
        return batch.num_rows

    # -- snapshots: small tables copied whole --------------------------------------------
    def replace_snapshot(self, table: str, records: Sequence[BaseModel]) -> int:
        """Replace `table` (one of SNAPSHOTS) by `records` (its contract's models), in one transaction."""
        model, _ = SNAPSHOTS[table]
        fields = _snapshot_fields(model)
        rows = pa.Table.from_pylist(
            [r.model_dump() for r in records], schema=pa.schema([(n, t) for n, (_, t) in fields.items()])
        )
        with self._transaction(new_rows=rows) as con:
            _run(con, f"DELETE FROM {table}")
            _run(con, f"INSERT INTO {table} SELECT {', '.join(fields)} FROM new_rows")
        return rows.num_rows

    def snapshot_rows(self, table: str) -> int:
        if table not in SNAPSHOTS:
            raise KeyError(table)
        return int(_run(self._con(), f"SELECT count(*) FROM {table}")[0][0])

    def counts(self) -> dict[str, int]:
        row = _run(
            self._con(),
            "SELECT (SELECT Events FROM events_cursor), (SELECT sum(Purchases) FROM sales_totals)",
        )[0]
        return {"events": int(row[0]), "purchases": int(row[1] or 0)}

    # -- answers ----------------------------------------------------------------------
    def event_rates(self, as_of: datetime, minutes: int, bucket_s: int) -> dict[str, list[dict[str, Any]]]:
        """Events per second by EventName in `bucket_s` buckets over the last `minutes` (by TimeStamp),
        from per-second counts: exact for an `as_of` on a whole second (the route passes one)."""
        end = _utc(as_of)
        start = end - timedelta(minutes=minutes)
        buckets = [start + timedelta(seconds=bucket_s * i) for i in range(minutes * 60 // bucket_s)]
        rows = self._rows(
            """
            SELECT EventName, floor(epoch(Sec - ?::TIMESTAMPTZ) / ?)::BIGINT AS b, sum(N) AS n
            FROM event_seconds WHERE Sec >= ? AND Sec < ?
            GROUP BY ALL
        """,
            [start, bucket_s, start, end],
        )
        counts = {(r["EventName"], r["b"]): int(r["n"]) for r in rows}
        names = sorted({r["EventName"] for r in rows} | set(EVENT_NAMES))
        return {
            # 6 decimals: per_s x bucket_s gives back each bucket's exact count (with 3, a 120 s
            # bucket lost up to 0.06 of an event, and the 3-hour chart's sum came out short)
            name: [{"t": t, "per_s": round(counts.get((name, i), 0) / bucket_s, 6)} for i, t in enumerate(buckets)]
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

    def funnel(self, as_of: datetime, window: str, include_bots: bool = False) -> list[dict[str, Any]]:
        """Users with PageVisited in the window; of them, with AddedBasket; of those, with a purchase;
        the bots' events and purchases left out unless `include_bots`.

        A user has an event of a name (or a purchase) in (start, end] exactly when their newest one
        up to now (`user_steps`, `user_bought`) or one stamped ahead of the last sync
        (`early_steps`, `early_bought`) falls in it."""
        span = WINDOWS[window]
        end = _utc(as_of)
        start = end - span if span is not None else datetime(1, 1, 1, tzinfo=UTC)
        row = _run(
            self._con(),
            f"""
            WITH steps AS (
                     SELECT UserId, EventName FROM user_steps WHERE Last > ? AND Last <= ? AND {_BOTS}
                     UNION ALL SELECT UserId, EventName FROM early_steps WHERE TimeStamp > ? AND TimeStamp <= ?
                                                                                AND {_BOTS}
                     UNION ALL SELECT UserId, 'Purchased' FROM user_bought WHERE Last > ? AND Last <= ? AND {_BOTS}
                     UNION ALL SELECT UserId, 'Purchased' FROM early_bought WHERE TimeStamp > ? AND TimeStamp <= ?
                                                                                  AND {_BOTS}),
                 users AS (SELECT bool_or(EventName = 'PageVisited') AS v, bool_or(EventName = 'AddedBasket') AS b,
                                  bool_or(EventName = 'Purchased') AS p
                           FROM steps GROUP BY UserId)
            SELECT count(*) FILTER (WHERE v), count(*) FILTER (WHERE v AND b), count(*) FILTER (WHERE v AND b AND p)
            FROM users
        """,
            [start, end, include_bots] * 4,
        )[0]
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

    def sales(self, n: int, include_bots: bool = False) -> dict[str, Any]:
        """Totals, the n best sellers by revenue and by units, payment types, the bots' purchases left
        out unless `include_bots`: read from the rollups the lake's sync keeps, so the answer costs
        the same however many purchases there are."""
        purchases, orders, revenue = _run(
            self._con(),
            f"SELECT coalesce(sum(Purchases), 0), coalesce(sum(Orders), 0), coalesce(sum(Revenue), 0) "
            f"FROM sales_totals WHERE {_BOTS}",
            [include_bots],
        )[0]

        def top(order: str) -> list[dict[str, Any]]:
            return [
                {**r, "Units": int(r["Units"]), "Revenue": _money(r["Revenue"]), "Orders": int(r["Orders"])}
                for r in self._rows(
                    f"""
                    WITH s AS (SELECT ProductId, sum(Units) AS Units, sum(Revenue) AS Revenue, sum(Orders) AS Orders
                               FROM product_sales WHERE {_BOTS} GROUP BY ProductId ORDER BY {order}, ProductId LIMIT ?)
                    SELECT s.*, {_NAMED} FROM s LEFT JOIN products p USING (ProductId) ORDER BY {order}, ProductId
                """,
                    [include_bots, n],
                )
            ]

        payments = self._rows(
            f"SELECT PaymentType, sum(Orders)::BIGINT AS Orders, sum(Revenue) AS Revenue FROM payment_sales "
            f"WHERE {_BOTS} GROUP BY PaymentType",
            [include_bots],
        )
        all_orders = sum(p["Orders"] for p in payments)
        categories = self._rows(
            f"""
            SELECT coalesce(p.Category, '{UNKNOWN}') AS Category, sum(s.Units)::BIGINT AS Units,
                   sum(s.Revenue) AS Revenue, count(DISTINCT s.ProductId) AS Products
            FROM product_sales s LEFT JOIN products p USING (ProductId) WHERE {_BOTS}
            GROUP BY ALL ORDER BY Revenue DESC, Category
        """,
            [include_bots],
        )
        return {
            "purchases": int(purchases),
            "orders": int(orders),
            "revenue": _money(revenue),
            "by_revenue": top("Revenue DESC"),
            "by_units": top("Units DESC"),
            "payment_types": sorted(
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
            ),
            # every category (a few dozen at most): revenue by category, and its share of the revenue
            "by_category": [
                {
                    "Category": c["Category"],
                    "Units": c["Units"],
                    "Revenue": _money(c["Revenue"]),
                    "Products": c["Products"],
                    "Share": _share(float(c["Revenue"]), float(revenue)),
                }
                for c in categories
            ],
        }

    def places(self, n: int, include_bots: bool = False, find: str | None = None) -> dict[str, Any]:
        """The n cities and the n countries with the most events (clicks) and with the most revenue
        (line amounts, as in `sales`), the bots' left out unless `include_bots`, each with its
        `Rank` among all places. With `find`: the first n, by rank, of the places whose name (the
        city's, or the country code) holds it, in any case, wherever they rank."""

        def top(keys: str, name: str, order: str) -> list[dict[str, Any]]:
            rows = self._rows(
                f"""
                WITH e AS (SELECT {keys}, sum(Events) AS Events FROM place_events WHERE {_BOTS} GROUP BY ALL),
                     s AS (SELECT {keys}, sum(Purchases) AS Purchases, sum(Revenue) AS Revenue
                           FROM place_sales WHERE {_BOTS} GROUP BY ALL),
                     j AS (SELECT {keys}, coalesce(Events, 0) AS Events, coalesce(Purchases, 0) AS Purchases,
                                  coalesce(Revenue, 0) AS Revenue
                           FROM e FULL OUTER JOIN s USING ({keys}))
                SELECT * FROM (
                    SELECT *, row_number() OVER (ORDER BY {order} DESC, {keys}) AS Rank FROM j WHERE {order} > 0
                ) WHERE ? IS NULL OR contains(lower({name}), lower(?))
                ORDER BY Rank LIMIT ?
            """,
                [include_bots, include_bots, find, find, n],
            )
            return [
                {
                    **r,
                    "Events": int(r["Events"]),
                    "Purchases": int(r["Purchases"]),
                    "Revenue": _money(r["Revenue"]),
                    "Rank": int(r["Rank"]),
                }
                for r in rows
            ]

        find = find.strip() or None if find else None
        city, country = "Country, Region, City", "Country"
        return {
            "include_bots": include_bots,
            "find": find,
            "cities_by_events": top(city, "City", "Events"),
            "cities_by_revenue": top(city, "City", "Revenue"),
            "countries_by_events": top(country, "Country", "Events"),
            "countries_by_revenue": top(country, "Country", "Revenue"),
        }

    def audience(self, include_bots: bool = False) -> dict[str, Any]:
        """Shares of users by browser and by device class (each user counted once, by their newest
        event), the bots left out unless `include_bots`; and the bots' share of users and of events."""
        mix = self._rows("SELECT Browser, Device, IsBot, Users FROM agent_users")
        (events, bot_events), users = (
            _run(
                self._con(),
                "SELECT coalesce(sum(Events), 0), coalesce(sum(Events) FILTER (WHERE IsBot), 0) FROM place_events",
            )[0],
            sum(int(r["Users"]) for r in mix),
        )
        bot_users = sum(int(r["Users"]) for r in mix if r["IsBot"])
        counted = [r for r in mix if include_bots or not r["IsBot"]]
        whole = sum(int(r["Users"]) for r in counted)

        def shares(key: str) -> list[dict[str, Any]]:
            by: dict[str, int] = {}
            for r in counted:
                by[r[key]] = by.get(r[key], 0) + int(r["Users"])
            return sorted(
                ({"Name": k, "Users": v, "Share": _share(v, whole)} for k, v in by.items()),
                key=lambda x: (-x["Users"], x["Name"]),
            )

        return {
            "include_bots": include_bots,
            "users": whole,
            "browsers": shares("Browser"),
            "devices": shares("Device"),
            "bots": {
                "users": bot_users,
                "all_users": users,
                "user_share": _share(bot_users, users),
                "events": int(bot_events),
                "all_events": int(events),
                "event_share": _share(int(bot_events), int(events)),
            },
        }

    def user_agent(self, user_id: str) -> dict[str, Any] | None:
        """The user's newest event's enrichment (browser, OS, device, bot, place) and its time."""
        rows = self._rows(
            "SELECT Last AS TimeStamp, Browser, Os, Device, IsBot, Country, Region, City FROM user_agents "
            "WHERE UserId = ?",
            [user_id],
        )
        return rows[0] if rows else None

    def product_names(self, ids: list[str]) -> dict[str, dict[str, str]]:
        """Name and Category of each of `ids`: the catalogue's, or the ProductId and "unknown"."""
        if not ids:
            return {}
        found = {
            r["ProductId"]: r
            for r in self._rows(
                "SELECT ProductId, Name, Category FROM products WHERE ProductId IN (SELECT unnest(?::VARCHAR[]))",
                [sorted(set(ids))],
            )
        }
        return {
            i: {"Name": found[i]["Name"], "Category": found[i]["Category"]} if i in found else _nameless(i) for i in ids
        }

    def customer(self, user_id: str) -> dict[str, Any] | None:
        """The user's signup date and home (PostgreSQL's customers, copied), or None if not there."""
        rows = self._rows("SELECT SignupDate, HomeCountry, HomeCity FROM customers WHERE UserId = ?", [user_id])
        return rows[0] if rows else None

    def sessions(self, days: int, n: int) -> dict[str, Any]:
        """The latest `days` days' session metrics, newest first, and the `n` products viewed in the
        most sessions with their click-through, as the contracts define them (`SessionDay.metrics`,
        `ProductEngagement.rates`), with the products' names."""
        day_rows = self._rows("SELECT * FROM session_days ORDER BY Day DESC LIMIT ?", [days])
        products = self._rows(
            f"SELECT e.*, {_NAMED} FROM product_engagement e LEFT JOIN products p USING (ProductId) "
            "ORDER BY Viewed DESC, ProductId LIMIT ?",
            [n],
        )
        return {
            "days": [SessionDay(**r).metrics().model_dump() for r in day_rows],
            "products": [
                {
                    **ProductEngagement(**{k: r[k] for k in ProductEngagement.model_fields}).rates().model_dump(),
                    **_name_of(r),
                }
                for r in products
            ],
        }

    def user_purchases(self, user_id: str, limit: int = 50) -> list[dict[str, Any]]:
        # the user's rows first (MATERIALIZED): with the ORDER BY ... LIMIT over the table, DuckDB
        # plans a top-N over a scan of every purchase instead of the index's lookup
        rows = self._rows(
            """
            WITH mine AS MATERIALIZED (
                SELECT OrderId, TimeStamp, TotalPrice, PaymentType, Items, ProductIds FROM purchases WHERE UserId = ?
            )
            SELECT * FROM mine ORDER BY TimeStamp DESC, OrderId LIMIT ?
        """,
            [user_id, limit],
        )
        names = self.product_names([p for r in rows for p in r["ProductIds"]])
        return [
            {
                **{k: v for k, v in r.items() if k != "ProductIds"},
                "TotalPrice": _money(r["TotalPrice"]),
                "Items": int(r["Items"]),
                "Products": [{"ProductId": p, **names[p]} for p in r["ProductIds"]],
            }
            for r in rows
        ]

    def purchase(self, event_id: str) -> dict[str, Any] | None:
        """The lake's purchase with this EventId as the read model holds it (the topic browser's
        search), with its lines; None when the lake has none."""
        rows = self._rows("SELECT * FROM purchases WHERE EventId = ?", [event_id])
        if not rows:
            return None
        lines = self._rows(
            "SELECT ProductId, ItemCount, LineAmount FROM lines WHERE EventId = ? ORDER BY ProductId", [event_id]
        )
        money = ("TotalPrice", "Amount")
        return {
            **{k: _money(v) if k in money else v for k, v in rows[0].items() if k != "ProductIds"},
            "Lines": [{**x, "LineAmount": _money(x["LineAmount"])} for x in lines],
        }

    def newest_ingested(self) -> datetime | None:
        return _run(self._con(), "SELECT max(IngestedAt) FROM purchases")[0][0]
