"""The event contracts: the one definition of every record shopstream carries.

JSON Schema (`json_schemas()`), the Spark schema and the API docs are derived
from these Pydantic models.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .dimensions import Customer, ProductInfo
from .events import EventAttributes, EventName, UserEvent
from .purchases import MAX_LINES, MAX_PURCHASES_PER_REQUEST, PaymentType, ProductLine, Purchase, lines_total
from .reasons import why_invalid
from .records import EventId, PurchaseRecord, Stamp, UserEventRecord
from .versions import VERSIONS

CLIENT_MODELS: tuple[type[BaseModel], ...] = (UserEvent, Purchase)
RECORD_MODELS: tuple[type[BaseModel], ...] = (UserEventRecord, PurchaseRecord)
DIMENSION_MODELS: tuple[type[BaseModel], ...] = (ProductInfo, Customer)  # the compacted topics' records
# every published contract has a version (`versions.VERSIONS`) and committed schemas
assert set(VERSIONS) == {*CLIENT_MODELS, *RECORD_MODELS, *DIMENSION_MODELS}


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every contract, as clients send it and as it is published (each current
    version's is committed under `schemas/`: `versions`)."""
    return {m.__name__: m.model_json_schema() for m in (*CLIENT_MODELS, *RECORD_MODELS, *DIMENSION_MODELS)}


__all__ = [
    "CLIENT_MODELS",
    "DIMENSION_MODELS",
    "MAX_LINES",
    "MAX_PURCHASES_PER_REQUEST",
    "RECORD_MODELS",
    "VERSIONS",
    "Customer",
    "EventAttributes",
    "EventId",
    "EventName",
    "PaymentType",
    "ProductInfo",
    "ProductLine",
    "Purchase",
    "PurchaseRecord",
    "Stamp",
    "UserEvent",
    "UserEventRecord",
    "json_schemas",
    "lines_total",
    "why_invalid",
]
