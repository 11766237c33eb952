"""The analyses' PostgreSQL: repeat buyers written, the product catalogue read.

Repeat buyers are replaced as a whole: TRUNCATE and INSERT run in the same transaction,
so a reader sees either the old rows or the new ones, never an empty or half-written table.
The catalogue (`products`) is what the batch's dimensions task loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, inspect, text

from shopstream.contracts.dimensions import PRODUCTS
from shopstream.contracts.repeat_buyers import COLUMNS, DDL, TABLE

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CATALOGUE_SCHEMA = "ProductId string, Name string, Category string"


def read_products(spark: SparkSession, engine: Engine) -> DataFrame:
    """The catalogue's ProductId, Name and Category as a Spark DataFrame (empty until the
    dimensions task has created the table): a row per product, read once through SQLAlchemy."""
    with engine.connect() as conn:
        rows = (
            conn.execute(text(f"SELECT product_id, name, category FROM {PRODUCTS.name}")).all()
            if inspect(conn).has_table(PRODUCTS.name)
            else []
        )
    return spark.createDataFrame([tuple(r) for r in rows], CATALOGUE_SCHEMA)


def replace_repeat_buyers(engine: Engine, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write the repeat buyers (rows with UserId, ProductId, Orders, Units, FirstBought, LastBought)."""
    now = datetime.now(UTC)
    params = [
        {
            "user_id": r["UserId"],
            "product_id": r["ProductId"],
            "orders": int(r["Orders"]),
            "units": int(r["Units"]),
            "first_bought": r["FirstBought"],
            "last_bought": r["LastBought"],
            "computed_at": now,
        }
        for r in rows
    ]
    with engine.begin() as conn:  # one transaction: create, truncate, insert
        conn.execute(text(DDL))
        conn.execute(text(f"TRUNCATE {TABLE}"))
        if params:
            conn.execute(
                text(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"),
                params,
            )
    return len(params)


TOP_REPEATED_PRODUCTS_SQL = f"""
-- The products most often bought repeatedly: how many customers bought each one in two or
-- more orders, then how many orders those were; ties by product id.
SELECT product_id,
       COUNT(*)    AS repeat_buyers,
       SUM(orders) AS repeat_orders,
       SUM(units)  AS units
FROM {TABLE}
GROUP BY product_id
ORDER BY repeat_buyers DESC, repeat_orders DESC, product_id
LIMIT 10
"""
