"""Repeat buyers in PostgreSQL: replaced as a whole, in one transaction.

TRUNCATE and INSERT run in the same transaction, so a reader sees either the old
rows or the new ones, never an empty or half-written table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from shopstream.contracts.repeat_buyers import COLUMNS, DDL, TABLE


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
