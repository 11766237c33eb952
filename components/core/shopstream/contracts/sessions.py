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


class DayMetrics(BaseModel):
    """One UTC day's sessions (by start), bots' sessions left out of all but `BotShare`."""

    Day: str = Field(description="YYYY-MM-DD (UTC)")
    Sessions: int
    Users: int = Field(description="distinct users with a session that day")
    AvgDurationS: float = Field(description="mean of End - Start, in seconds")
    PagesPerSession: float
    BounceRate: float = Field(description="sessions of a single event, a page view / sessions")
    ConversionRate: float = Field(description="sessions with a purchase / sessions")
    Revenue: str = Field(description="the sessions' orders' TotalPrice, a decimal string")
    BotShare: float = Field(description="bots' sessions / all sessions")


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

    def metrics(self) -> DayMetrics:
        """The day's session metrics: averages and rates over its (human) sessions."""
        n, everyone = self.Sessions, self.Sessions + self.BotSessions
        return DayMetrics(
            Day=self.Day,
            Sessions=n,
            Users=self.Users,
            AvgDurationS=round(self.DurationMs / n / 1000, 3) if n else 0.0,
            PagesPerSession=round(self.Pages / n, 3) if n else 0.0,
            BounceRate=round(self.Bounces / n, 4) if n else 0.0,
            ConversionRate=round(self.Converted / n, 4) if n else 0.0,
            Revenue=f"{self.RevenueCents / 100:.2f}",
            BotShare=round(self.BotSessions / everyone, 4) if everyone else 0.0,
        )


class EngagementRates(BaseModel):
    """A product's click-through: sessions at each step, and the rates between them."""

    ProductId: str
    Viewed: int
    Added: int
    Bought: int
    ViewToBasket: float = Field(description="Added / Viewed")
    BasketToPurchase: float = Field(description="Bought / Added")


class ProductEngagement(BaseModel):
    """How many (human) sessions viewed a product, added it to the basket, and bought it. A
    session counts at the furthest step it took the product to and at every step before (an
    order's product was in the basket and was seen), so Viewed >= Added >= Bought."""

    model_config = ConfigDict(extra="forbid")

    ProductId: str
    Viewed: int = 0
    Added: int = 0
    Bought: int = 0

    def rates(self) -> EngagementRates:
        """The shop's click-through: view to basket, and basket to purchase."""
        return EngagementRates(
            ProductId=self.ProductId,
            Viewed=self.Viewed,
            Added=self.Added,
            Bought=self.Bought,
            ViewToBasket=round(self.Added / self.Viewed, 4) if self.Viewed else 0.0,
            BasketToPurchase=round(self.Bought / self.Added, 4) if self.Added else 0.0,
        )
