"""The dashboard's JSON API: one response model per data call (they make its OpenAPI spec).

Every panel's answer says where it came from and whether that store answered
(`source`), so the page can show one store as down while the rest keeps working.
Money is in the shop's currency, rounded to cents; times are UTC ISO 8601.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field

from shopstream.contracts.sessions import DayMetrics, EngagementRates

SourceState = Literal["up", "down", "loading"]
FunnelWindow = Literal["15m", "1h", "24h", "all"]


class DashboardConfig(BaseModel):
    refresh_s: float = Field(description="how often the dashboard reads the stores, and the page asks")


class Source(BaseModel):
    """One store as the dashboard last saw it."""

    name: str = Field(description="mongodb, lake, postgresql, kafka, airflow, api, streaming")
    state: SourceState
    synced_at: datetime | None = Field(None, description="when the data shown was last read from the store")
    error: str | None = None
    detail: str | None = Field(None, description="progress while loading (for example 'events 40%')")


class EventRate(BaseModel):
    t: datetime = Field(description="bucket start")
    per_s: float


class PurchaseMinute(BaseModel):
    t: datetime = Field(description="minute start")
    purchases: int
    revenue: float


class Activity(BaseModel):
    """Events per second by EventName (MongoDB, by TimeStamp), purchases and revenue per minute (lake)."""

    as_of: datetime
    minutes: int
    bucket_s: int
    events: dict[str, list[EventRate]] = Field(description="EventName -> one point per bucket, oldest first")
    purchases: list[PurchaseMinute]
    sources: list[Source]


class FunnelStep(BaseModel):
    step: Literal["PageVisited", "AddedBasket", "Purchased"]
    users: int
    rate_from_previous: float | None = Field(description="users / users of the step before (None for the first)")
    rate_from_first: float | None


class Funnel(BaseModel):
    """Users who visited a page in the window; of them, who added to the basket; of those, who bought."""

    window: FunnelWindow
    include_bots: bool = Field(description="false: the bots' events and purchases are left out")
    as_of: datetime
    steps: list[FunnelStep]
    sources: list[Source]


class ProductSales(BaseModel):
    ProductId: str
    Name: str = Field(description="the catalogue's name (PostgreSQL's products), or the ProductId if not there")
    Category: str = Field(description='the catalogue\'s category, or "unknown"')
    Units: int
    Revenue: float
    Orders: int


class CategorySales(BaseModel):
    Category: str = Field(description='the catalogue\'s category; "unknown" for products not in it')
    Units: int
    Revenue: float = Field(description="sum of its products' line amounts")
    Products: int = Field(description="products of the category sold")
    Share: float = Field(description="of the revenue")


class PaymentShare(BaseModel):
    PaymentType: str
    Orders: int
    Revenue: float
    Share: float = Field(description="of all orders")


class Sales(BaseModel):
    """Best sellers and payment types over every purchase in the lake (the analysis' definitions)."""

    purchases: int
    orders: int
    revenue: float = Field(description="sum of line amounts, ItemCount x (ItemPrice - ItemDiscount)")
    by_revenue: list[ProductSales]
    by_units: list[ProductSales]
    payment_types: list[PaymentShare]
    by_category: list[CategorySales] = Field(description="every category, by revenue")
    include_bots: bool = Field(description="false: the bots' purchases are left out")
    source: Source = Field(description="the lake's")
    sources: list[Source] = Field(description="the lake's, and PostgreSQL's (the products' names)")


class PlaceFigures(BaseModel):
    """A place's events (clicks) and purchases, by the sender's address (GeoLite2; "unknown" when not found)."""

    Country: str = Field(description='ISO 3166-1 alpha-2, or "unknown"')
    Region: str | None = None
    City: str | None = None
    Events: int
    Purchases: int
    Revenue: float = Field(description="sum of line amounts, as in /api/sales")
    Rank: int = Field(description="its place among all places by this list's measure, from 1")


class Places(BaseModel):
    """The top cities and countries by events and by revenue, over every event and purchase."""

    include_bots: bool = Field(description="false: the bots' events and purchases are left out")
    find: str | None = Field(description="the places are those whose name holds this (null: the top ones)")
    cities_by_events: list[PlaceFigures]
    cities_by_revenue: list[PlaceFigures]
    countries_by_events: list[PlaceFigures]
    countries_by_revenue: list[PlaceFigures]
    sources: list[Source]


class Share(BaseModel):
    Name: str
    Users: int
    Share: float = Field(description="of the users counted")


class BotShare(BaseModel):
    users: int = Field(description="users whose newest event came from a bot's user agent")
    all_users: int
    user_share: float
    events: int = Field(description="events sent by a bot's user agent")
    all_events: int
    event_share: float


class Audience(BaseModel):
    """Shares of users (each counted once, by their newest event's user agent), and the bots' share."""

    include_bots: bool = Field(description="false: users whose newest event was a bot's are left out of the shares")
    users: int = Field(description="users counted in the shares")
    browsers: list[Share]
    devices: list[Share] = Field(description="desktop, mobile, tablet, bot, unknown")
    bots: BotShare
    sources: list[Source]


class ProductEngagementRates(EngagementRates):
    """A product's engagement (`ProductEngagement.rates`) with its catalogue name and category."""

    Name: str
    Category: str


class Sessions(BaseModel):
    """The batch's session metrics per day and product engagement (MongoDB, copied every refresh)."""

    days: list[DayMetrics] = Field(description="the latest days, newest first")
    products: list[ProductEngagementRates] = Field(description="the products viewed in the most sessions")
    sources: list[Source]


class RepeatBuyer(BaseModel):
    user_id: str
    product_id: str
    product_name: str = Field(description="the catalogue's name, or the product_id")
    orders: int
    units: int
    first_bought: datetime
    last_bought: datetime
    computed_at: datetime


class RepeatBuyers(BaseModel):
    """The latest rows of PostgreSQL's repeat_buyers table (written by the analysis)."""

    rows: list[RepeatBuyer]
    total: int
    source: Source


class ProductName(BaseModel):
    ProductId: str
    Name: str = Field(description="the catalogue's name, or the ProductId")
    Category: str


class UserPurchase(BaseModel):
    OrderId: str
    TimeStamp: datetime
    TotalPrice: float
    PaymentType: str
    Items: int = Field(description="units over all lines")
    Products: list[ProductName] = Field(description="its lines' products, in line order")


class UserSession(BaseModel):
    """One of the user's sessions (MongoDB's `sessions`, written by the batch)."""

    SessionId: str
    Start: datetime
    DurationMs: int
    Pages: int
    Purchased: bool
    Revenue: float = Field(description="its orders' TotalPrice")
    Device: str
    Browser: str
    City: str


class CustomerInfo(BaseModel):
    """The customer's record (PostgreSQL's customers, copied)."""

    SignupDate: date
    HomeCountry: str
    HomeCity: str


class UserAgent(BaseModel):
    """The enrichment of the user's newest event."""

    TimeStamp: datetime = Field(description="of that event")
    Browser: str
    Os: str
    Device: str
    IsBot: bool
    Country: str
    Region: str
    City: str


class UserLookup(BaseModel):
    UserId: str
    event_counts: dict[str, int] | None = Field(description="EventCount per EventName from MongoDB; None if it is down")
    purchases: list[UserPurchase] | None = Field(description="newest first, from the lake; None if it is down")
    agent: UserAgent | None = Field(description="browser, device and place of the newest event read; None before one")
    customer: CustomerInfo | None = Field(None, description="None when the customers table has no row for the user")
    sessions: list[UserSession] | None = Field(
        None, description="the latest sessions, newest first (at most 5); None if MongoDB is down"
    )
    sources: list[Source]


class ServiceStatus(BaseModel):
    name: str
    state: Literal["up", "down"]
    detail: str | None = None
    restarts: int | None = Field(
        None,
        description="restarts by the embedded stack's supervisor since `invoke up` "
        "(null where something else runs the service)",
    )


class ApiTraffic(BaseModel):
    requests_per_s: float
    errors_per_s: float = Field(description="5xx answers per second")
    rejected_per_s: float = Field(description="4xx answers per second (invalid input)")
    error_rate: float = Field(description="5xx / all answers over the last interval")
    published_per_s: dict[str, float] = Field(description="records acknowledged by Kafka per second, by topic")


class ConsumerLag(BaseModel):
    topic: str
    group: str
    lag: int
    end: int = Field(description="records the topic has received")


class DagRun(BaseModel):
    run_id: str
    state: str
    start: datetime | None
    end: datetime | None
    drained: int | None = Field(None, description="records the drain stored")
    counted: int | None = Field(None, description="events the aggregation counted")


class StreamingHealth(BaseModel):
    batch_id: int | None
    batch_at: datetime | None
    input_rows: int
    output_rows: int | None
    batch_ms: int | None
    freshness_s: float | None = Field(description="age of the newest purchase readable in the lake")


class OffsetRewind(BaseModel):
    """A stage read records again: the broker had lost records past its committed offset."""

    stage: Literal["drain", "streaming"]
    topic: str
    partition: int
    committed: int = Field(description="the offset the stage had committed")
    resumed_from: int = Field(description="where it read again from")
    end: int = Field(description="the partition's end offset when the rewind was found")
    at: datetime
    reason: str = Field(description="'position past the end', 'records replaced', ...")


class OffsetRewinds(BaseModel):
    count: int
    by_stage: dict[str, int] = Field(description="stage -> rewinds recorded")
    latest: list[OffsetRewind] = Field(description="newest first, at most 5")


class Health(BaseModel):
    as_of: datetime
    services: list[ServiceStatus]
    api: ApiTraffic | None
    lag: list[ConsumerLag]
    dag_runs: list[DagRun]
    streaming: StreamingHealth | None
    rewinds: OffsetRewinds | None = Field(None, description="offset rewinds of the drain and the streaming job")
    sources: list[Source]
