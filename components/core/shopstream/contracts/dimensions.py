"""Dimension data: the shop's product catalogue and its customers, as the pipeline joins them.

The generator publishes each record, keyed by its id, as the model's JSON to a compacted
topic (`KafkaSettings.products_topic`, `customers_topic`); the batch's `dimensions` task
upserts them into PostgreSQL (`products`, `customers`), whose tables are derived here from
the models' fields: one column per field (snake_case), the id the primary key, plus
`updated_at`, the time the row last changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from .events import STRICT
from .types import Identifier, Money

Label = Annotated[str, StringConstraints(min_length=1, max_length=120)]
"""A name, category, brand, country or city: 1-120 characters."""


class ProductInfo(BaseModel):
    """One product of the catalogue: what it is called and sold as, at its list price."""

    model_config = STRICT

    ProductId: Identifier
    Name: Label
    Category: Label
    Brand: Label
    ListPrice: Money


class Customer(BaseModel):
    """One customer: when they signed up and where they live (their visitor address' city)."""

    model_config = STRICT

    UserId: Identifier
    SignupDate: date
    HomeCountry: Label
    HomeCity: Label


def key_of(record: BaseModel) -> str:
    """A dimension record's id, its first field: its Kafka key and its row's primary key."""
    return str(getattr(record, next(iter(type(record).model_fields))))


def column(field: str) -> str:
    """A model field's column: ProductId -> product_id."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", field).lower()


def _sql_type(info: FieldInfo) -> str:
    if info.annotation is Decimal:
        digits = next(m for m in info.metadata if getattr(m, "max_digits", None))
        return f"numeric({digits.max_digits},{digits.decimal_places})"
    if info.annotation is date:
        return "date"
    if info.annotation is str:
        return "text"
    raise TypeError(f"no SQL type for {info.annotation}")


@dataclass(frozen=True)
class DimensionTable:
    """A model's PostgreSQL table: its DDL and its upsert, derived from the model's fields."""

    name: str
    model: type[BaseModel]

    @property
    def key_field(self) -> str:
        return next(iter(self.model.model_fields))  # the id comes first

    @property
    def key(self) -> str:
        return column(self.key_field)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column(f) for f in self.model.model_fields)

    @property
    def ddl(self) -> str:
        cols = [f"{column(f)} {_sql_type(info)} NOT NULL" for f, info in self.model.model_fields.items()]
        cols += ["updated_at timestamptz NOT NULL DEFAULT now()", f"PRIMARY KEY ({self.key})"]
        return f"CREATE TABLE IF NOT EXISTS {self.name} (\n    " + ",\n    ".join(cols) + "\n)"

    @property
    def upsert(self) -> str:
        """INSERT ... ON CONFLICT DO UPDATE with named parameters (the columns); a row that
        would not change is left as it is, `updated_at` included."""
        cols, others = self.columns, [c for c in self.columns if c != self.key]
        new = ", ".join(f"EXCLUDED.{c}" for c in others)
        return (
            f"INSERT INTO {self.name} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)}) "
            f"ON CONFLICT ({self.key}) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
            + ", updated_at = now() "
            f"WHERE ({', '.join(f'{self.name}.{c}' for c in others)}) IS DISTINCT FROM ({new})"
        )

    def row(self, record: BaseModel) -> dict[str, Any]:
        """A validated record as the upsert's parameters."""
        return {column(f): v for f, v in record.model_dump().items()}


PRODUCTS = DimensionTable("products", ProductInfo)
CUSTOMERS = DimensionTable("customers", Customer)
