"""Session analytics as the batch keeps them in MongoDB and every reader finds them.

A session is a SessionId's events (from MongoDB's events) and orders (from the lake's
purchases). Money is kept in whole cents, so the running sums stay exact. Days are UTC days
of a session's start; bots' sessions are counted apart and left out of every other figure.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from .enrichment import DeviceClass


class SessionOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    OrderId: str
    At: datetime = Field(description="the purchase's TimeStamp")
    Cents: int = Field(description="the order's TotalPrice in cents")
    Products: list[str] = Field(description="the ProductIds of its lines")


class SessionRecord(BaseModel):
    """One session (`_id` is its SessionId). Start, End and the device fields come from its
    events; a session known only from a purchase so far has no Start and counts nowhere yet."""

    model_config = ConfigDict(extra="forbid")

    SessionId: str
    UserId: str
    Start: datetime | None = Field(description="its first event's TimeStamp")
    End: datetime | None = Field(description="its last event's or purchase's TimeStamp, whichever is later")
    DurationMs: int = Field(ge=0, description="End - Start")
    Events: int = Field(ge=0)
    Pages: int = Field(ge=0, description="PageVisited events")
    Viewed: list[str] = Field(description="ProductIds of its PageVisited events, sorted")
    Added: list[str] = Field(description="ProductIds of its AddedBasket events, sorted")
    Orders: list[SessionOrder]
    Purchased: bool
    RevenueCents: int = Field(ge=0, description="the sum of its orders' TotalPrice, in cents")
    Device: DeviceClass
    Browser: str
    Country: str
    City: str
    IsBot: bool = Field(description="its first event's user agent is a crawler's")


class SessionDay(BaseModel):
    """Sums over one UTC day's sessions (by Start), bots apart; rates are derived on reading."""

    model_config = ConfigDict(extra="forbid")

    Day: str = Field(description="YYYY-MM-DD (UTC)")
    Sessions: int = 0
    Users: int = Field(0, description="distinct users with a session that day")
    Bounces: int = Field(0, description="sessions of a single event, a page view")
    Converted: int = Field(0, description="sessions with a purchase")
    DurationMs: int = 0
    Pages: int = 0
    Orders: int = 0
    RevenueCents: int = 0
    BotSessions: int = 0

    def metrics(self) -> dict[str, float | int | str]:
        """The day's session metrics: averages and rates over its (human) sessions."""
        n = self.Sessions
        return {
            "Day": self.Day,
            "Sessions": n,
            "Users": self.Users,
            "AvgDurationS": round(self.DurationMs / n / 1000, 3) if n else 0.0,
            "PagesPerSession": round(self.Pages / n, 3) if n else 0.0,
            "BounceRate": round(self.Bounces / n, 4) if n else 0.0,
            "ConversionRate": round(self.Converted / n, 4) if n else 0.0,
            "Revenue": f"{self.RevenueCents / 100:.2f}",
            "BotShare": round(self.BotSessions / (n + self.BotSessions), 4) if n + self.BotSessions else 0.0,
        }


class ProductEngagement(BaseModel):
    """How many (human) sessions viewed a product, added it to the basket, and bought it."""

    model_config = ConfigDict(extra="forbid")

    ProductId: str
    Viewed: int = 0
    Added: int = 0
    Bought: int = 0

    def rates(self) -> dict[str, float | int | str]:
        """The shop's click-through: view to basket, and basket to purchase."""
        return {
            "ProductId": self.ProductId,
            "Viewed": self.Viewed,
            "Added": self.Added,
            "Bought": self.Bought,
            "ViewToBasket": round(self.Added / self.Viewed, 4) if self.Viewed else 0.0,
            "BasketToPurchase": round(self.Bought / self.Added, 4) if self.Added else 0.0,
        }
