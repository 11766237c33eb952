"""The `repeat_buyers` table in PostgreSQL: the analysis writes it (`invoke analyze`), the dashboard reads it.

One row per customer and product bought in two or more orders.
"""

from __future__ import annotations

TABLE = "repeat_buyers"
COLUMNS = ("user_id", "product_id", "orders", "units", "first_bought", "last_bought", "computed_at")

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    user_id      text        NOT NULL,
    product_id   text        NOT NULL,
    orders       integer     NOT NULL CHECK (orders > 1),
    units        integer     NOT NULL,
    first_bought timestamptz NOT NULL,
    last_bought  timestamptz NOT NULL,
    computed_at  timestamptz NOT NULL,
    PRIMARY KEY (user_id, product_id)
)
"""
