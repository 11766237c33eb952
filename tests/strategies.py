"""Hypothesis strategies for valid contract records, built from the contracts' own rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import strategies as st

from shopstream.contracts import EventName, PaymentType
from shopstream.contracts.types import EARLIEST, LATEST

ID_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
ID_REST = ID_FIRST + "_.:@-"

identifiers = st.builds(
    lambda a, b: a + b,
    st.sampled_from(ID_FIRST),
    st.text(alphabet=ID_REST, max_size=63),
)
cents = st.integers(min_value=0, max_value=100_000_000)  # up to 1,000,000.00
money = cents.map(lambda c: Decimal(c).scaleb(-2))
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
timestamps = st.builds(
    lambda dt, tz: dt.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(
        min_value=EARLIEST.replace(tzinfo=None) + timedelta(days=1),
        max_value=LATEST.replace(tzinfo=None) - timedelta(days=1),
    ),
    offsets,
)


@st.composite
def price_and_discount(draw, max_price_cents: int = 100_000_000):
    price = draw(st.integers(0, max_price_cents))
    discount = draw(st.integers(0, price))
    return Decimal(price).scaleb(-2), Decimal(discount).scaleb(-2)


def iso(ts: datetime) -> str:
    return ts.isoformat()


@st.composite
def user_events(draw) -> dict:
    price, discount = draw(price_and_discount())
    return {
        "UserId": draw(identifiers),
        "SessionId": draw(identifiers),
        "EventName": draw(st.sampled_from([e.value for e in EventName])),
        "TimeStamp": iso(draw(timestamps)),
        "Attributes": {"ProductId": draw(identifiers), "Price": float(price), "Discount": float(discount)},
    }


@st.composite
def product_lines(draw) -> dict:
    # keep line totals below the money maximum: count x unit price <= 1,000,000
    count = draw(st.integers(1, 50))
    price, discount = draw(price_and_discount(max_price_cents=100_000 // count * 100))
    return {
        "ProductId": draw(identifiers),
        "ItemCount": count,
        "ItemPrice": float(price),
        "ItemDiscount": float(discount),
    }


@st.composite
def purchases(draw, max_lines: int = 5) -> dict:
    lines = draw(st.lists(product_lines(), min_size=1, max_size=max_lines))
    total = sum(
        Decimal(str(line["ItemCount"])) * (Decimal(str(line["ItemPrice"])) - Decimal(str(line["ItemDiscount"])))
        for line in lines
    )
    return {
        "SessionId": draw(identifiers),
        "TimeStamp": iso(draw(timestamps)),
        "UserId": draw(identifiers),
        "TotalPrice": float(total),
        "OrderId": draw(identifiers),
        "Products": lines,
        "PaymentType": draw(st.sampled_from([p.value for p in PaymentType])),
    }
