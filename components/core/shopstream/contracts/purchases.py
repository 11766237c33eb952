"""Purchases: one completed order each (`POST /PurchasedItems` takes an array of them)."""

from __future__ import annotations

from decimal import Decimal
from enum import Enum

from pydantic import BaseModel, Field, model_validator

from .events import STRICT
from .types import Identifier, Money, UtcTimestamp, field_error

MAX_LINES = 100
MAX_PURCHASES_PER_REQUEST = 1000  # POST /PurchasedItems takes 1 to this many
TOTAL_TOLERANCE = Decimal("0.01")


class PaymentType(str, Enum):
    CreditCard = "CreditCard"
    DebitCard = "DebitCard"
    PayPal = "PayPal"
    ApplePay = "ApplePay"
    GooglePay = "GooglePay"
    BankTransfer = "BankTransfer"
    GiftCard = "GiftCard"
    CashOnDelivery = "CashOnDelivery"


class ProductLine(BaseModel):
    """ItemPrice and ItemDiscount are per unit; the line costs ItemCount x (ItemPrice - ItemDiscount)."""

    model_config = STRICT

    ProductId: Identifier
    ItemCount: int = Field(ge=1, le=10_000, strict=True)
    ItemPrice: Money
    ItemDiscount: Money

    @model_validator(mode="after")
    def _discount_not_above_price(self) -> ProductLine:
        if self.ItemDiscount > self.ItemPrice:
            raise field_error(
                "ProductLine",
                "ItemDiscount",
                "discount_above_price",
                "ItemDiscount must not be above ItemPrice",
                self.ItemDiscount,
            )
        return self

    @property
    def amount(self) -> Decimal:
        return self.ItemCount * (self.ItemPrice - self.ItemDiscount)


class Purchase(BaseModel):
    """One order. TotalPrice must equal the sum of its lines' amounts within one cent."""

    model_config = STRICT

    SessionId: Identifier
    TimeStamp: UtcTimestamp
    UserId: Identifier
    TotalPrice: Money
    OrderId: Identifier
    Products: list[ProductLine] = Field(min_length=1, max_length=MAX_LINES)
    PaymentType: PaymentType

    @model_validator(mode="after")
    def _total_matches_lines(self) -> Purchase:
        expected = lines_total(self.Products)
        if abs(self.TotalPrice - expected) > TOTAL_TOLERANCE:
            raise field_error(
                "Purchase",
                "TotalPrice",
                "total_mismatch",
                f"TotalPrice must equal the lines' total {expected} within 0.01",
                self.TotalPrice,
            )
        return self


def lines_total(lines: list[ProductLine]) -> Decimal:
    return sum((line.amount for line in lines), Decimal("0"))
