"""Spark schemas derived from the contracts' Pydantic models.

The JSON Schema cannot say what Spark needs (money is only "number" there), so this
walks the models' fields and their constraints instead: money keeps its exact
precision (`DecimalType(max_digits, decimal_places)`), timestamps are UTC instants,
enums are their string values, nested models and lists stay nested. It translates;
it never restates a rule. pyspark is imported only when a schema is asked for.
"""

from __future__ import annotations

import types
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, FutureDatetime, NaiveDatetime, PastDatetime

# pydantic's constrained datetimes are markers, not datetime subclasses
DATETIMES = (datetime, AwareDatetime, NaiveDatetime, PastDatetime, FutureDatetime)

if TYPE_CHECKING:
    from pyspark.sql.types import DataType, StructType

INT32 = (-(2**31), 2**31 - 1)


def _meta(metadata: list[Any], name: str) -> Any:
    """The last value a field's constraints give for `name` (ge, le, max_digits, ...)."""
    values = [getattr(item, name) for item in metadata if getattr(item, name, None) is not None]
    return values[-1] if values else None


def _spark_type(annotation: Any, metadata: list[Any]) -> tuple[DataType, bool]:
    """(Spark type, nullable) for one annotation."""
    from pyspark.sql import types as T

    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"no Spark type for the union {annotation!r}")
        return _spark_type(args[0], metadata)[0], True
    if origin is list:
        (item,) = get_args(annotation)
        item_type, item_nullable = _spark_type(item, [])
        return T.ArrayType(item_type, containsNull=item_nullable), False
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return spark_schema(annotation), False
        if issubclass(annotation, Enum):
            return T.StringType(), False
        if issubclass(annotation, bool):
            return T.BooleanType(), False
        if issubclass(annotation, int):
            lo, hi = _meta(metadata, "ge"), _meta(metadata, "le")
            fits = lo is not None and hi is not None and INT32[0] <= lo and hi <= INT32[1]
            return (T.IntegerType() if fits else T.LongType()), False
        if issubclass(annotation, Decimal):
            digits, places = _meta(metadata, "max_digits"), _meta(metadata, "decimal_places")
            if digits is None or places is None:
                raise TypeError("a Decimal field needs max_digits and decimal_places for an exact Spark type")
            return T.DecimalType(digits, places), False
        if issubclass(annotation, float):
            return T.DoubleType(), False
        if issubclass(annotation, str):
            return T.StringType(), False
        if issubclass(annotation, DATETIMES):  # before date: datetime is a date
            return T.TimestampType(), False
        if issubclass(annotation, date):
            return T.DateType(), False
    raise TypeError(f"no Spark type for {annotation!r}")


def spark_schema(model: type[BaseModel]) -> StructType:
    """The Spark StructType of `model`, field for field, in the model's order.

    A field is nullable only when the contract allows it (Optional or not required).
    """
    from pyspark.sql import types as T

    fields = []
    for name, info in model.model_fields.items():
        data_type, nullable = _spark_type(info.annotation, info.metadata)
        fields.append(T.StructField(info.alias or name, data_type, nullable or not info.is_required()))
    return T.StructType(fields)
