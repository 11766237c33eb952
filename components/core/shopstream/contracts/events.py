"""User events: what a shopper did, one record per action (`PUT /SendEvent`)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, model_validator

from .types import Identifier, Money, UtcTimestamp, field_error

STRICT = ConfigDict(extra="forbid", str_strip_whitespace=False, frozen=True)


class EventName(str, Enum):
    PageVisited = "PageVisited"
    AddedBasket = "AddedBasket"
    CheckedProductReviews = "CheckedProductReviews"


class EventAttributes(BaseModel):
    """The product the event is about, at the price shown to the user."""

    model_config = STRICT

    ProductId: Identifier
    Price: Money
    Discount: Money

    @model_validator(mode="after")
    def _discount_not_above_price(self) -> EventAttributes:
        if self.Discount > self.Price:
            raise field_error(
                "EventAttributes", "Discount", "discount_above_price", "Discount must not be above Price", self.Discount
            )
        return self


class UserEvent(BaseModel):
    """One user action, as a client sends it."""

    model_config = STRICT

    UserId: Identifier
    SessionId: Identifier
    EventName: EventName
    TimeStamp: UtcTimestamp
    Attributes: EventAttributes
