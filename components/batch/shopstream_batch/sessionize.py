"""Sessions from events and orders, and what each session adds to the day and product sums.

Pure functions over plain documents, so the exactness arguments live here and are tested
without a server (`shopstream_batch.sessions` does the reading and writing).

A session document grows as its events (an aggregation batch at a time) and its orders (a
lake file at a time) arrive, in any order. Each merge is idempotent: a batch already in
the document's `Batches`, or an order already among its `Orders`, changes nothing. The day
and product sums are kept by deltas: a session's contribution before a merge is taken back
and its contribution after is added, so the sums always equal what the sessions say, however
often a session changed, and a session that moves to another day (an earlier event came
late) moves its figures with it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from shopstream.contracts.enrichment import NOT_KNOWN

BATCHES_KEPT = 50  # batches remembered per session; a retry comes long before 50 more batches touch it
PAGE, BASKET = "PageVisited", "AddedBasket"
MS = timedelta(milliseconds=1)  # MongoDB keeps times to the millisecond


def empty_session(session_id: str, user_id: str) -> dict[str, Any]:
    nk = NOT_KNOWN
    return {
        "_id": session_id,
        "UserId": user_id,
        "Start": None,
        "End": None,
        "DurationMs": 0,
        "Events": 0,
        "Pages": 0,
        "Viewed": [],
        "Added": [],
        "Orders": [],
        "Purchased": False,
        "RevenueCents": 0,
        "Device": nk.Device.value,
        "Browser": nk.Browser,
        "Country": nk.Country,
        "City": nk.City,
        "IsBot": False,
        # bookkeeping
        "FirstEventId": None,
        "EventsEnd": None,
        "Batches": [],
    }


def _derive(doc: dict[str, Any]) -> dict[str, Any]:
    """End, duration, purchase and revenue from the events' span and the orders."""
    ends = [t for t in (doc["EventsEnd"], *(o["At"] for o in doc["Orders"])) if t is not None]
    doc["End"] = max(ends) if doc["Start"] is not None and ends else None
    doc["DurationMs"] = (doc["End"] - doc["Start"]) // MS if doc["End"] is not None else 0
    doc["Purchased"] = bool(doc["Orders"])
    doc["RevenueCents"] = sum(o["Cents"] for o in doc["Orders"])
    return doc


def merge_events(doc: dict[str, Any] | None, events: list[dict[str, Any]], batch_id: str) -> dict[str, Any] | None:
    """The session with `events` (one aggregation batch's events of it, as stored) added; None
    when the batch was merged before (nothing changes)."""
    first = events[0]
    doc = dict(doc) if doc is not None else empty_session(first["SessionId"], first["UserId"])
    if batch_id in doc["Batches"]:
        return None
    viewed, added = set(doc["Viewed"]), set(doc["Added"])
    for e in events:
        ts, product = e["TimeStamp"], (e.get("Attributes") or {}).get("ProductId")
        doc["Events"] += 1
        if e["EventName"] == PAGE:
            doc["Pages"] += 1
            viewed.add(product)
        elif e["EventName"] == BASKET:
            added.add(product)
        if doc["Start"] is None or (ts, e["_id"]) < (doc["Start"], doc["FirstEventId"]):
            doc["Start"], doc["FirstEventId"], doc["UserId"] = ts, e["_id"], e["UserId"]
            enrichment = e.get("Enrichment") or NOT_KNOWN.model_dump(mode="json")
            doc.update({k: enrichment[k] for k in ("Device", "Browser", "Country", "City", "IsBot")})
        if doc["EventsEnd"] is None or ts > doc["EventsEnd"]:
            doc["EventsEnd"] = ts
    doc["Viewed"], doc["Added"] = sorted(p for p in viewed if p), sorted(p for p in added if p)
    doc["Batches"] = [*doc["Batches"], batch_id][-BATCHES_KEPT:]
    return _derive(doc)


def cents(amount: Decimal | float | str) -> int:
    return int(Decimal(str(amount)) * 100)


def merge_orders(doc: dict[str, Any] | None, session_id: str, orders: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The session with `orders` ({OrderId, UserId, At, Cents, Products}) added; None when
    every one of them is there already."""
    doc = dict(doc) if doc is not None else empty_session(session_id, orders[0]["UserId"])
    known = {o["OrderId"] for o in doc["Orders"]}
    new = []
    for o in orders:
        if o["OrderId"] not in known:
            known.add(o["OrderId"])
            new.append({k: o[k] for k in ("OrderId", "At", "Cents", "Products")})
    if not new:
        return None
    doc["Orders"] = sorted([*doc["Orders"], *new], key=lambda o: (o["At"], o["OrderId"]))
    return _derive(doc)


@dataclass(frozen=True)
class Contribution:
    day: str
    user: str | None  # None for a bot's session: bots are not users of the shop
    sums: dict[str, int]
    products: dict[str, dict[str, int]]


def contribution(doc: dict[str, Any] | None) -> Contribution | None:
    """What a session adds to its day's sums and to its products' engagement; None until its
    events have come (a purchase alone does not make a session)."""
    if doc is None or doc["Start"] is None:
        return None
    day = _utc_day(doc["Start"])
    if doc["IsBot"]:
        return Contribution(day, None, {"BotSessions": 1}, {})
    sums = {
        "Sessions": 1,
        "Bounces": int(doc["Events"] == 1 and doc["Pages"] == 1 and not doc["Orders"]),
        "Converted": int(doc["Purchased"]),
        "DurationMs": doc["DurationMs"],
        "Pages": doc["Pages"],
        "Orders": len(doc["Orders"]),
        "RevenueCents": doc["RevenueCents"],
    }
    # each product at the furthest step of the funnel the session took it to, and so at every
    # step before: a product bought without a basket event (a one-click order) was in the basket,
    # so view >= basket >= purchase holds for every product and the rates stay below 1
    bought = {p for o in doc["Orders"] for p in o["Products"]}
    added = set(doc["Added"]) | bought
    products = {p: {"Viewed": 1} for p in set(doc["Viewed"]) | added}
    for p in added:
        products[p]["Added"] = 1
    for p in bought:
        products[p]["Bought"] = 1
    return Contribution(day, doc["UserId"], sums, products)


def _utc_day(ts: datetime) -> str:
    """The UTC day of a time (a naive one is UTC already, as pymongo returns them without tz_aware)."""
    return (ts.astimezone(UTC) if ts.tzinfo is not None else ts).strftime("%Y-%m-%d")


@dataclass
class Deltas:
    """What a set of session changes does to the sums: per day, per (day, user), per product."""

    days: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    users: Counter = field(default_factory=Counter)
    products: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, c: Contribution | None, sign: int) -> None:
        if c is None:
            return
        self.days[c.day].update({k: sign * v for k, v in c.sums.items()})
        if c.user is not None:
            self.users[(c.day, c.user)] += sign
        for p, counts in c.products.items():
            self.products[p].update({k: sign * v for k, v in counts.items()})

    def change(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        self.add(contribution(old), -1)
        self.add(contribution(new), +1)

    @staticmethod
    def nonzero(counts: Counter) -> dict[str, int]:
        return {k: v for k, v in counts.items() if v}

    def day_incs(self) -> Iterable[tuple[str, dict[str, int]]]:
        return ((d, inc) for d, c in self.days.items() if (inc := self.nonzero(c)))

    def product_incs(self) -> Iterable[tuple[str, dict[str, int]]]:
        return ((p, inc) for p, c in self.products.items() if (inc := self.nonzero(c)))

    def user_incs(self) -> Iterable[tuple[tuple[str, str], int]]:
        return ((k, n) for k, n in self.users.items() if n)
