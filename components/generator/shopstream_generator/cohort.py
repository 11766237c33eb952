"""One cohort: a second's worth of finished shop sessions, built as contract models.

A session is a user browsing products (PageVisited, sometimes CheckedProductReviews,
sometimes AddedBasket), and ending, for some, in a Purchase of (some of) the basket,
later than every event of the session. A crawler's session is page views only, many of
them, and never a basket or a purchase. Everything random comes from the Faker
passed in, and the only time used is `now`: the same world, Faker seed and `now`
give the same cohort.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import accumulate

from faker import Faker

from shopstream.contracts import EventAttributes, EventName, ProductLine, Purchase, UserEvent, lines_total

from .catalogue import PAYMENT_CUM_WEIGHTS, PAYMENT_TYPES, Product, User, World
from .visitors import Visitor

PRODUCTS_VIEWED = (1, 2, 3, 4, 5, 6)
PRODUCTS_VIEWED_CUM = tuple(accumulate((22, 24, 20, 16, 11, 7)))
ITEM_COUNTS = (1, 2, 3, 4)
ITEM_COUNTS_CUM = tuple(accumulate((80, 14, 4, 2)))
P_VIEW_FAVOURITE = 0.45  # a viewed product is one of the user's favourites
P_CHECK_REVIEWS = 0.35
P_ADD_FAVOURITE, P_ADD_OTHER = 0.5, 0.18  # a viewed product goes into the basket
P_CHECKOUT = 0.55  # a non-empty basket is bought
P_KEEP_IN_ORDER = 0.85  # a basket item is still in the order at checkout
P_PREFERRED_PAYMENT = 0.8
EVENT_GAP_MS = (500, 15_000)  # between two events of a session
CRAWLED_PAGES = (10, 30)  # a crawler's page views per session
CRAWL_GAP_MS = (50, 1_000)
CHECKOUT_GAP_MS = (2_000, 30_000)  # from the last event to the purchase


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    user_id: str
    events: tuple[UserEvent, ...]  # in time order
    purchase: Purchase | None  # after the last event, of products added to the basket
    visitor: Visitor  # who sends it: the user's browser and address


@dataclass(frozen=True, slots=True)
class Cohort:
    tag: str  # unique per cohort (its time and a random token); part of its SessionIds and OrderIds
    now: datetime
    sessions: tuple[Session, ...]

    @property
    def events(self) -> list[UserEvent]:
        return [e for s in self.sessions for e in s.events]

    @property
    def purchases(self) -> list[Purchase]:
        return [s.purchase for s in self.sessions if s.purchase is not None]


@lru_cache(maxsize=100_000)
def _attributes(product: Product) -> EventAttributes:
    return EventAttributes(ProductId=product.product_id, Price=product.price, Discount=product.discount)


def build_cohort(world: World, fake: Faker, now: datetime, sessions: int) -> Cohort:
    """`sessions` sessions of users from `world`, each ending within the second before `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # millisecond precision, like the events
    rnd = fake.random
    tag = f"{now:%Y%m%d%H%M%S}{now.microsecond // 1000:03d}-{fake.hexify('^^^^')}"
    users = rnd.choices(world.users, cum_weights=world.user_cum_weights, k=sessions)
    built = []
    for i, user in enumerate(users):
        end = now - timedelta(milliseconds=rnd.randrange(1000))
        built.append(_session(world, fake, user, f"sess-{tag}-{i}", f"order-{tag}-{i}", end))
    return Cohort(tag, now, tuple(built))


def _viewed_products(world: World, fake: Faker, user: User) -> list[Product]:
    rnd = fake.random
    wanted = min(len(world.products), rnd.choices(PRODUCTS_VIEWED, cum_weights=PRODUCTS_VIEWED_CUM)[0])
    viewed: dict[str, Product] = {}
    while len(viewed) < wanted:
        if rnd.random() < P_VIEW_FAVOURITE:
            product = rnd.choice(user.favourites)
        else:
            product = rnd.choices(world.products, cum_weights=world.product_cum_weights)[0]
        viewed.setdefault(product.product_id, product)
    return list(viewed.values())


def _events(
    user: User, session_id: str, steps: list[tuple[EventName, Product]], offsets: list[int], start: datetime
) -> tuple[UserEvent, ...]:
    """A session's events: each step at its offset in ms from `start`."""
    return tuple(
        UserEvent(
            UserId=user.user_id,
            SessionId=session_id,
            EventName=name,
            TimeStamp=start + timedelta(milliseconds=offset),
            Attributes=_attributes(product),
        )
        for (name, product), offset in zip(steps, offsets, strict=False)  # offsets is [0] with no steps
    )


def _crawl(world: World, fake: Faker, user: User, session_id: str, end: datetime) -> Session:
    rnd = fake.random
    pages = min(len(world.products), rnd.randint(*CRAWLED_PAGES))
    products = rnd.sample(world.products, pages)
    offsets = [0, *accumulate(rnd.randint(*CRAWL_GAP_MS) for _ in products[1:])]
    steps = [(EventName.PageVisited, p) for p in products]
    events = _events(user, session_id, steps, offsets, end - timedelta(milliseconds=offsets[-1]))
    return Session(session_id, user.user_id, events, None, user.visitor)


def _session(world: World, fake: Faker, user: User, session_id: str, order_id: str, end: datetime) -> Session:
    if user.visitor.is_bot:
        return _crawl(world, fake, user, session_id, end)
    rnd = fake.random
    favourite_ids = {p.product_id for p in user.favourites}
    steps: list[tuple[EventName, Product]] = []
    basket: list[Product] = []
    for product in _viewed_products(world, fake, user):
        steps.append((EventName.PageVisited, product))
        if rnd.random() < P_CHECK_REVIEWS:
            steps.append((EventName.CheckedProductReviews, product))
        if rnd.random() < (P_ADD_FAVOURITE if product.product_id in favourite_ids else P_ADD_OTHER):
            steps.append((EventName.AddedBasket, product))
            basket.append(product)
    ordered = [p for p in basket if rnd.random() < P_KEEP_IN_ORDER] or basket[:1]
    buys = bool(basket) and rnd.random() < P_CHECKOUT

    # Offsets in ms from the first event; the session ends (last event or purchase) at `end`.
    offsets = [0, *accumulate(rnd.randint(*EVENT_GAP_MS) for _ in steps[1:])]
    last = offsets[-1] + (rnd.randint(*CHECKOUT_GAP_MS) if buys else 0)
    events = _events(user, session_id, steps, offsets, end - timedelta(milliseconds=last))
    purchase = _purchase(fake, user, session_id, order_id, ordered, end) if buys else None
    return Session(session_id, user.user_id, events, purchase, user.visitor)


def _purchase(fake: Faker, user: User, session_id: str, order_id: str, items: list[Product], at: datetime) -> Purchase:
    rnd = fake.random
    lines = [
        ProductLine(
            ProductId=p.product_id,
            ItemCount=rnd.choices(ITEM_COUNTS, cum_weights=ITEM_COUNTS_CUM)[0],
            ItemPrice=p.price,
            ItemDiscount=p.discount,
        )
        for p in items
    ]
    if rnd.random() < P_PREFERRED_PAYMENT:
        payment = user.payment_type
    else:
        payment = rnd.choices(PAYMENT_TYPES, cum_weights=PAYMENT_CUM_WEIGHTS)[0]
    return Purchase(
        SessionId=session_id,
        TimeStamp=at,
        UserId=user.user_id,
        TotalPrice=lines_total(lines),
        OrderId=order_id,
        Products=lines,
        PaymentType=payment,
    )
