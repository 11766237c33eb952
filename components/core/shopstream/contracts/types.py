"""Field types shared by the contracts: identifiers, money, UTC timestamps.

The rules a shop wants live here once; JSON Schema, the Spark schema and the
docs are derived from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BeforeValidator,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_MONEY = Decimal("1000000")
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$"),
]
"""UserId, SessionId, OrderId, ProductId: 1-64 characters, letters, digits and _.:@- ."""


def _json_number(value: Any) -> Any:
    # Money is a JSON number on the wire; "19.99" as a string is a client bug, not money.
    if isinstance(value, (str, bool)):
        raise ValueError("must be a JSON number, not a string or boolean")
    return value


Money = Annotated[
    Decimal,
    # the constraints before the check, so pydantic-core applies them inside its decimal
    # validator (the other way round they run as Python validators: 4x the cost per value)
    Field(ge=0, le=MAX_MONEY, max_digits=9, decimal_places=2),
    BeforeValidator(_json_number),
    PlainSerializer(float, return_type=float, when_used="json"),
    WithJsonSchema(
        {
            "type": "number",
            "minimum": 0,
            "maximum": float(MAX_MONEY),
            "description": "amount in the shop's currency, at most 2 decimal places",
        }
    ),
]
"""Non-negative, at most 1,000,000, cents precision; exact (Decimal) in Python, a number in JSON."""


def _to_utc(value: datetime) -> datetime:
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 in UTC
        raise ValueError("must be between 2000-01-01 and 2100-01-01") from None
    if not EARLIEST <= value < LATEST:
        raise ValueError("must be between 2000-01-01 and 2100-01-01")
    return value


UtcTimestamp = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""ISO 8601 with an explicit offset (naive times are ambiguous and rejected), kept in UTC."""


def field_error(model: str, field: str, code: str, message: str, value: Any) -> ValidationError:
    """A cross-field rule's failure, reported at the field it is about (not at the model)."""
    return ValidationError.from_exception_data(
        model, [InitErrorDetails(type=PydanticCustomError(code, message), loc=(field,), input=value)]
    )
