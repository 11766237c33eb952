"""The dashboard against the real stores: events and purchases go through the API, the drain,
the aggregation and the streaming job into MongoDB and the lake, repeat buyers into
PostgreSQL, a product catalogue and customers through the dimensions task into PostgreSQL,
sessions through the sessions task into MongoDB; every number the JSON API and the page in
headless Chromium show is checked against the same shop computed here in plain Python (the
session metrics: against the contract's metrics of the documents the pipeline wrote, and
their sums against the shop).

Each user sends from one known browser and address (as the shop's front proxy forwards them:
User-Agent, X-Forwarded-For), whose browser, device and city are known answers
(test_enrichment's); one more user is a crawler, which the funnel, sales, places and shares
leave out by default."""

from __future__ import annotations

import random
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from conftest import ServerThread, run_until_caught_up
from shopstream.adapters.kafka import ensure_topics
from shopstream.adapters.mongo import mongo_client
from shopstream.adapters.postgres import pg_engine
from shopstream.contracts import UserEventRecord
from shopstream.contracts.dimensions import Customer, ProductInfo
from shopstream.contracts.sessions import SessionDay
from shopstream.settings import REPO_ROOT, Settings
from shopstream_analysis.warehouse import replace_repeat_buyers
from shopstream_batch.aggregate import update_event_counts
from shopstream_batch.dimensions import load_dimensions
from shopstream_batch.drain import drain_user_events
from shopstream_batch.sessions import update_sessions
from shopstream_batch.store import ensure_collections, event_document
from shopstream_generator.dimensions import publish
from shopstream_stack.isolated import free_port
from test_enrichment import CHROME_ANDROID_PHONE, CHROME_WINDOWS, FIREFOX_MAC, GOOGLEBOT, SAFARI_IPAD, SAFARI_IPHONE

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack")]

NAMES = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
PAYMENTS = ["CreditCard", "PayPal", "ApplePay", "GiftCard"]
CENT = Decimal("0.01")
USERS = 14
# user agent, forwarded address -> the browser, device and place enrichment gives (known answers)
SENDERS = [
    (CHROME_WINDOWS, "81.2.69.160", "Chrome", "desktop", ("GB", "England", "Willesden")),
    (SAFARI_IPHONE, "89.160.20.128", "Mobile Safari", "mobile", ("SE", "Stockholm", "Stockholm")),
    (CHROME_ANDROID_PHONE, "128.101.101.101", "Chrome Mobile", "mobile", ("US", "Minnesota", "Minneapolis")),
    (FIREFOX_MAC, "81.2.69.160", "Firefox", "desktop", ("GB", "England", "Willesden")),
    (SAFARI_IPAD, "8.8.8.8", "Mobile Safari", "tablet", ("US", "unknown", "unknown")),
]
CRAWLER = (GOOGLEBOT, "89.160.20.128", "Googlebot", "bot", ("SE", "Stockholm", "Stockholm"))
CATEGORIES = ["Books", "Garden", "Toys"]
# the catalogue: p00 to p11; p12 and p13 are sold and p14 to p20 viewed, but not in it (shown by id)
CATALOGUE = {
    f"p{i:02d}": ProductInfo(
        ProductId=f"p{i:02d}", Name=f"Lamp no. {i}", Category=CATEGORIES[i % 3], Brand="Acme", ListPrice=Decimal("9.99")
    )
    for i in range(12)
}


def named(product_id: str) -> dict[str, str]:
    """A product's Name and Category as the dashboard shows them: the catalogue's, or its id and "unknown"."""
    p = CATALOGUE.get(product_id)
    return {"Name": p.Name, "Category": p.Category} if p else {"Name": product_id, "Category": "unknown"}


def is_bot(user_id: str) -> bool:
    return user_id.startswith("bot-")


def sender(user_id: str) -> tuple:
    """The user's one browser and address: the crawler's, or one of SENDERS by the user's number."""
    return CRAWLER if is_bot(user_id) else SENDERS[int(user_id[1:3]) % len(SENDERS)]


def headers(user_id: str) -> dict[str, str]:
    """As the shop's front proxy sends a user's requests (the API trusts it: loopback)."""
    agent, address, *_ = sender(user_id)
    return {"User-Agent": agent, "X-Forwarded-For": address}


def humans(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not is_bot(r["UserId"])]


def make_shop(run: str, now: datetime) -> tuple[list[dict], list[dict]]:
    """Events and purchases of 14 users: some within the last 15 minutes, some 30-300 minutes
    ago (so the funnel's windows differ), none near a window's edge; and a crawler's page views."""
    rnd = random.Random(20261122)
    ago = lambda: now - timedelta(seconds=rnd.choice([rnd.randint(60, 600), rnd.randint(1800, 18000)]))  # noqa: E731
    events = []
    for u in range(USERS):
        for _ in range(rnd.randint(2, 12)):
            name = rnd.choices(NAMES, weights=[5, 2, 1])[0]
            events.append(
                {
                    "UserId": f"u{u:02d}-{run}",
                    "SessionId": f"s{u}-{run}",
                    "EventName": name,
                    "TimeStamp": ago().isoformat(),
                    "Attributes": {"ProductId": f"p{rnd.randint(0, 20):02d}", "Price": 10.5, "Discount": 0.5},
                }
            )
    for _ in range(5):
        events.append(
            {
                "UserId": f"bot-{run}",
                "SessionId": f"bot-{run}",
                "EventName": "PageVisited",
                "TimeStamp": ago().isoformat(),
                "Attributes": {"ProductId": f"p{rnd.randint(0, 20):02d}", "Price": 10.5, "Discount": 0.5},
            }
        )
    orders = []
    for i in range(40):
        lines = []
        for product in rnd.sample(range(14), rnd.randint(1, 3)):
            price = Decimal(rnd.randint(100, 20_000)) * CENT
            discount = min(price, Decimal(rnd.choice([0, 0, 50, 199])) * CENT)
            lines.append(
                {
                    "ProductId": f"p{product:02d}",
                    "ItemCount": rnd.randint(1, 4),
                    "ItemPrice": float(price),
                    "ItemDiscount": float(discount),
                }
            )
        total = sum(
            Decimal(str(x["ItemCount"])) * (Decimal(str(x["ItemPrice"])) - Decimal(str(x["ItemDiscount"])))
            for x in lines
        )
        u = rnd.randint(0, USERS - 1)
        orders.append(
            {
                "SessionId": f"s{u}-{run}",  # bought in the session of their page views
                "UserId": f"u{u:02d}-{run}",
                "OrderId": f"o-{run}-{i:02d}",
                "TimeStamp": ago().isoformat(),
                "TotalPrice": float(total),
                "Products": lines,
                "PaymentType": rnd.choice(PAYMENTS),
            }
        )
    return events, orders


def ts(x: dict) -> datetime:
    return datetime.fromisoformat(x["TimeStamp"])


def amount(line: dict) -> Decimal:
    return line["ItemCount"] * (Decimal(str(line["ItemPrice"])) - Decimal(str(line["ItemDiscount"])))


def money(x: Decimal) -> float:
    return float(x.quantize(CENT))


def expected_sales(orders: list[dict], n: int) -> dict:
    units, revenue, in_orders = Counter(), defaultdict(Decimal), defaultdict(set)
    for o in orders:
        for line in o["Products"]:
            units[line["ProductId"]] += line["ItemCount"]
            revenue[line["ProductId"]] += amount(line)
            in_orders[line["ProductId"]].add(o["OrderId"])
    rows = [
        {"ProductId": p, **named(p), "Units": units[p], "Revenue": money(revenue[p]), "Orders": len(in_orders[p])}
        for p in units
    ]
    pay_orders, pay_revenue = Counter(), defaultdict(Decimal)
    for o in orders:
        pay_orders[o["PaymentType"]] += 1
        pay_revenue[o["PaymentType"]] += Decimal(str(o["TotalPrice"]))
    payments = sorted(
        (
            {"PaymentType": p, "Orders": c, "Revenue": money(pay_revenue[p]), "Share": round(c / len(orders), 4)}
            for p, c in pay_orders.items()
        ),
        key=lambda r: (-r["Orders"], r["PaymentType"]),
    )
    return {
        "purchases": len(orders),
        "orders": len(orders),
        "revenue": money(sum((amount(x) for o in orders for x in o["Products"]), Decimal(0))),
        "by_revenue": sorted(rows, key=lambda r: (-r["Revenue"], r["ProductId"]))[:n],
        "by_units": sorted(rows, key=lambda r: (-r["Units"], r["ProductId"]))[:n],
        "payment_types": payments,
    }


def expected_funnel(events: list[dict], orders: list[dict], since: datetime | None) -> list[int]:
    """The funnel of the users who are no bots."""

    def users(rows, name=None):
        return {
            r["UserId"]
            for r in humans(rows)
            if (since is None or ts(r) > since) and (name is None or r["EventName"] == name)
        }

    visited = users(events, "PageVisited")
    basket = users(events, "AddedBasket") & visited
    bought = users(orders) & basket
    return [len(visited), len(basket), len(bought)]


def expected_repeat_buyers(orders: list[dict]) -> list[dict]:
    seen = defaultdict(list)
    for o in orders:
        for line in o["Products"]:
            seen[(o["UserId"], line["ProductId"])].append((o["OrderId"], line["ItemCount"], ts(o)))
    return [
        {
            "UserId": u,
            "ProductId": p,
            "Orders": len({x[0] for x in v}),
            "Units": sum(x[1] for x in v),
            "FirstBought": min(x[2] for x in v),
            "LastBought": max(x[2] for x in v),
        }
        for (u, p), v in seen.items()
        if len({x[0] for x in v}) > 1
    ]


# -- the shop, through the real pipeline --------------------------------------------------
@pytest.fixture(scope="module")
def shop(settings, spark):
    run = uuid.uuid4().hex[:8]
    now = datetime.now(UTC)
    kafka = settings.kafka.model_copy(
        update={
            "user_events_topic": f"UserEvents-{run}",
            "purchases_topic": f"PurchasedItem-{run}",
            "products_topic": f"Products-{run}",
            "customers_topic": f"Customers-{run}",
        }
    )
    ensure_topics(kafka)
    cfg = settings.model_copy(
        update={
            "run_dir": Path(tempfile.mkdtemp(prefix="shopstream-dash-")),  # no streaming job's status here
            "kafka": kafka,
            "mongo": settings.mongo.model_copy(update={"database": f"dash_{run}"}),
            "postgres": settings.postgres.model_copy(update={"database": f"dash_{run}"}),
            "batch": settings.batch.model_copy(
                update={"consumer_group": f"dash-{run}", "dimensions_group": f"dash-dims-{run}"}
            ),
            "streaming": settings.streaming.model_copy(
                update={
                    "output_path": f"tests/dash-{run}/purchases",
                    "quarantine_path": f"tests/dash-{run}/quarantine",
                    "starting_offsets": "earliest",
                }
            ),
        }
    )
    events, orders = make_shop(run, now)
    from shopstream_api.main import create_app as api_app

    api = ServerThread(api_app(cfg), forwarded_allow_ips=cfg.api.trusted_proxies).__enter__()
    cfg = cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": api.port})})
    with httpx.Client(base_url=api.url, timeout=30) as client:
        for e in events:
            client.put("/SendEvent", json=e, headers=headers(e["UserId"])).raise_for_status()
        for o in orders:  # one POST per buyer, as the shop's front proxy sends them
            client.post("/PurchasedItems", json=[o], headers=headers(o["UserId"])).raise_for_status()
    assert drain_user_events(cfg).stored == len(events)
    assert update_event_counts(cfg).events_counted == len(events)
    run_until_caught_up(spark, cfg)
    report = update_sessions(cfg)  # the DAG's sessions task: the batches counted, the lake's files
    assert not (report.remaining_batches or report.remaining_files), report
    customers = customers_of(run)
    publish(cfg.kafka, {cfg.kafka.products_topic: list(CATALOGUE.values()), cfg.kafka.customers_topic: customers})
    assert load_dimensions(cfg).changed == len(CATALOGUE) + len(customers)  # the DAG's dimensions task
    repeats = expected_repeat_buyers(orders)
    assert repeats, "the shop must have repeat buyers"
    replace_repeat_buyers(pg_engine(cfg.postgres), repeats)
    yield {
        "cfg": cfg,
        "events": events,
        "orders": orders,
        "repeats": repeats,
        "api": api,
        "customers": {c.UserId: c for c in customers},
    }
    api.__exit__(None, None, None)


def customers_of(run: str) -> list[Customer]:
    """The users but the last (no record: the lookup says so), each at home in their sender's city."""
    return [
        Customer(
            UserId=f"u{u:02d}-{run}",
            SignupDate=date(2024, 1, 1) + timedelta(days=u),
            HomeCountry=sender(f"u{u:02d}")[4][0],
            HomeCity=sender(f"u{u:02d}")[4][2],
        )
        for u in range(USERS - 1)
    ]


def dashboard_settings(cfg: Settings, read_model: Path | None = None, **over) -> Settings:
    """A dashboard on a free port, with a read model file of its own unless given one."""
    model = read_model or Path(tempfile.mkdtemp(prefix="shopstream-dash-model-")) / "readmodel.duckdb"
    update = {"port": free_port(), "refresh_s": 1.0, "read_model": model}
    return cfg.model_copy(update={"dashboard": cfg.dashboard.model_copy(update=update), **over})


def wait_synced(url: str, purchases: int, events_users: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        sales = httpx.get(f"{url}/api/sales", timeout=10).json()
        funnel = httpx.get(f"{url}/api/funnel", params={"window": "all"}, timeout=10).json()
        if sales["purchases"] == purchases and funnel["steps"][0]["users"] == events_users:
            return
        assert time.monotonic() < deadline, (sales["source"], funnel["sources"])
        time.sleep(0.5)


@pytest.fixture(scope="module")
def dashboard(shop):
    from shopstream_dashboard.main import create_app

    cfg = dashboard_settings(shop["cfg"])
    with ServerThread(create_app(cfg)) as server:
        visited = {e["UserId"] for e in humans(shop["events"]) if e["EventName"] == "PageVisited"}
        wait_synced(server.url, len(shop["orders"]), len(visited))
        wait_until(
            server.url,
            "/api/sessions",
            lambda s: s["days"] and s["products"] and "12 products" in (s["sources"][1]["detail"] or ""),
        )
        yield server


def wait_until(url: str, path: str, ok, timeout_s: float = 60) -> dict:
    """The answer of `path` once `ok` says yes of it."""
    deadline = time.monotonic() + timeout_s
    while not ok(got := get_url(url, path)):
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    return got


def get(server, path: str, **params) -> dict:
    r = httpx.get(f"{server.url}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


# -- the JSON API ----------------------------------------------------------------------------
def test_sales_agree_with_the_posted_purchases(dashboard, shop):
    got = get(dashboard, "/api/sales", n=5)
    want = expected_sales(shop["orders"], 5)
    assert got["source"]["state"] == "up"
    assert {k: got[k] for k in want} == want


@pytest.mark.parametrize("window", ["15m", "1h", "24h", "all"])
def test_funnel_counts_users_step_by_step_in_each_window(dashboard, shop, window):
    got = get(dashboard, "/api/funnel", window=window)
    since = (
        None
        if window == "all"
        else datetime.fromisoformat(got["as_of"])
        - {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24)}[window]
    )
    want = expected_funnel(shop["events"], shop["orders"], since)
    assert [s["users"] for s in got["steps"]] == want
    assert [s["step"] for s in got["steps"]] == ["PageVisited", "AddedBasket", "Purchased"]
    first, prev = got["steps"][0]["users"], None
    for step in got["steps"]:
        assert step["rate_from_first"] == (round(step["users"] / first, 4) if first else None)
        assert step["rate_from_previous"] == (round(step["users"] / prev, 4) if prev else None)
        prev = step["users"]


def test_activity_has_the_last_15_minutes_of_events_and_purchases(dashboard, shop):
    got = get(dashboard, "/api/activity", minutes=15)
    assert [s["state"] for s in got["sources"]] == ["up", "up"], got["sources"]  # later syncs too
    since = datetime.fromisoformat(got["as_of"]) - timedelta(minutes=15)
    recent = Counter(e["EventName"] for e in shop["events"] if ts(e) >= since)
    assert set(got["events"]) == set(NAMES)
    for name in NAMES:
        points = got["events"][name]
        assert len(points) == 15 * 60 // got["bucket_s"]
        assert round(sum(p["per_s"] * got["bucket_s"] for p in points)) == recent[name], name
    orders = [o for o in shop["orders"] if ts(o) >= since]
    assert sum(m["purchases"] for m in got["purchases"]) == len(orders) > 0
    assert round(sum(m["revenue"] for m in got["purchases"]), 2) == money(
        sum((amount(x) for o in orders for x in o["Products"]), Decimal(0))
    )


def test_user_lookup_shows_event_counts_and_purchases(dashboard, shop):
    user = Counter(o["UserId"] for o in shop["orders"]).most_common(1)[0][0]
    got = get(dashboard, f"/api/users/{user}")
    assert got["event_counts"] == dict(Counter(e["EventName"] for e in shop["events"] if e["UserId"] == user))
    mine = sorted((o for o in shop["orders"] if o["UserId"] == user), key=lambda o: (ts(o), o["OrderId"]))
    assert [p["OrderId"] for p in got["purchases"]] == [
        o["OrderId"] for o in sorted(mine, key=lambda o: (-ts(o).timestamp(), o["OrderId"]))
    ]
    assert [p["Items"] for p in got["purchases"]] == [
        sum(x["ItemCount"] for x in o["Products"])
        for o in sorted(mine, key=lambda o: (-ts(o).timestamp(), o["OrderId"]))
    ]
    newest_first = sorted(mine, key=lambda o: (-ts(o).timestamp(), o["OrderId"]))
    assert [[(x["ProductId"], x["Name"]) for x in p["Products"]] for p in got["purchases"]] == [
        [(x["ProductId"], named(x["ProductId"])["Name"]) for x in o["Products"]] for o in newest_first
    ]
    # the user's one session (their page views, with their orders), as the sessions task wrote it
    client = mongo_client(shop["cfg"].mongo)
    try:
        doc = ensure_collections(client[shop["cfg"].mongo.database], shop["cfg"].batch).sessions.find_one(
            {"UserId": user}
        )
    finally:
        client.close()
    (session,) = got["sessions"]
    assert session["SessionId"] == doc["_id"] == f"s{int(user[1:3])}-{user.split('-')[1]}"
    assert (session["Pages"], session["DurationMs"], session["Purchased"]) == (
        sum(e["SessionId"] == doc["_id"] and e["EventName"] == "PageVisited" for e in shop["events"]),
        doc["DurationMs"],
        True,
    )
    assert session["Revenue"] == money(sum((Decimal(str(o["TotalPrice"])) for o in mine), Decimal(0)))
    assert (session["Device"], session["City"]) == (sender(user)[3], sender(user)[4][2])
    customer = shop["customers"].get(user)
    assert got["customer"] == (
        {
            "SignupDate": customer.SignupDate.isoformat(),
            "HomeCountry": customer.HomeCountry,
            "HomeCity": customer.HomeCity,
        }
        if customer
        else None
    )
    missing = httpx.get(f"{dashboard.url}/api/users/nobody-{uuid.uuid4().hex[:6]}", timeout=10)
    assert missing.status_code == 404 and "no events and no purchases" in missing.json()["detail"]


def test_repeat_buyers_are_postgresqls_latest_rows(dashboard, shop):
    got = get(dashboard, "/api/repeat-buyers", n=5)
    want = sorted(shop["repeats"], key=lambda r: (-r["LastBought"].timestamp(), r["UserId"], r["ProductId"]))[:5]
    assert got["total"] == len(shop["repeats"])
    assert [(r["user_id"], r["product_id"], r["product_name"], r["orders"], r["units"]) for r in got["rows"]] == [
        (r["UserId"], r["ProductId"], named(r["ProductId"])["Name"], r["Orders"], r["Units"]) for r in want
    ]


def test_revenue_by_category_joins_the_sales_with_the_catalogue(dashboard, shop):
    revenue, units, sold = defaultdict(Decimal), Counter(), defaultdict(set)
    for o in shop["orders"]:
        for line in o["Products"]:
            category = named(line["ProductId"])["Category"]
            revenue[category] += amount(line)
            units[category] += line["ItemCount"]
            sold[category].add(line["ProductId"])
    assert "unknown" in revenue and len(revenue) > 2  # products outside the catalogue too
    got = get(dashboard, "/api/sales")
    assert [s["state"] for s in got["sources"]] == ["up", "up"] and got["sources"][1]["name"] == "postgresql"
    assert [(c["Category"], c["Revenue"], c["Units"], c["Products"]) for c in got["by_category"]] == [
        (c, money(revenue[c]), units[c], len(sold[c])) for c in sorted(revenue, key=lambda c: (-revenue[c], c))
    ]


def session_docs(cfg: Settings) -> tuple[list[dict], list[dict]]:
    """The session day sums and product engagement the sessions task wrote, as MongoDB holds them."""
    from shopstream.adapters.mongo import collections, database

    client = mongo_client(cfg.mongo)
    try:
        colls = collections(database(client, cfg.mongo), cfg.batch)
        return list(colls.session_days.find()), list(colls.product_engagement.find())
    finally:
        client.close()


def day_metrics(doc: dict) -> dict:
    return SessionDay(**{k: v for k, v in doc.items() if k != "_id"}).metrics().model_dump()


def test_sessions_panel_has_the_batchs_days_and_engagement(dashboard, shop):
    days, products = session_docs(shop["cfg"])
    # the documents add up to the shop: one session per user (its orders in it), the crawler's apart
    humans_ordering = {o["UserId"] for o in shop["orders"]}
    total = lambda key: sum(d.get(key, 0) for d in days)  # noqa: E731
    assert (total("Sessions"), total("BotSessions"), total("Converted")) == (USERS, 1, len(humans_ordering))
    cents = sum(int(Decimal(str(o["TotalPrice"])) * 100) for o in shop["orders"])
    assert total("RevenueCents") == cents
    got = get(dashboard, "/api/sessions", days=7, n=5)
    assert [s["state"] for s in got["sources"]] == ["up", "up"]
    assert got["days"] == [day_metrics(d) for d in sorted(days, key=lambda d: d["Day"], reverse=True)[:7]]
    top = sorted(products, key=lambda d: (-d.get("Viewed", 0), d["_id"]))[:5]
    assert [(p["ProductId"], p["Viewed"], p["Added"], p["Bought"], p["Name"]) for p in got["products"]] == [
        (d["_id"], d.get("Viewed", 0), d.get("Added", 0), d.get("Bought", 0), named(d["_id"])["Name"]) for d in top
    ]


def test_health_reports_each_store_lag_and_api_traffic(dashboard, shop):
    cfg = shop["cfg"]
    late = [{**e, "SessionId": "late"} for e in shop["events"][:3]]
    with httpx.Client(base_url=shop["api"].url, timeout=30) as client:
        for e in late:  # three more events: the batch group is 3 behind
            client.put("/SendEvent", json=e, headers=headers(e["UserId"])).raise_for_status()
    deadline = time.monotonic() + 30
    while True:
        # traffic that publishes nothing: an invalid event, answered 422
        assert httpx.put(f"{shop['api'].url}/SendEvent", json={"UserId": "x"}, timeout=10).status_code == 422
        health = get(dashboard, "/api/health")
        lag = {(x["topic"], x["group"]): x for x in health["lag"]}
        key = (cfg.kafka.user_events_topic, cfg.batch.consumer_group)
        api = health["api"] or {}
        if key in lag and lag[key]["lag"] == 3 and api.get("rejected_per_s", 0) > 0:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert lag[key]["end"] == len(shop["events"]) + 3
    states = {s["name"]: s for s in health["services"]}
    for name in ("api", "kafka", "mongodb", "postgresql", "s3"):
        assert states[name]["state"] == "up", states[name]
    # not running in this test: shown as down, with the reason
    assert states["streaming"]["state"] == "down" and "no status file" in states["streaming"]["detail"]
    assert states["airflow"]["state"] == "down" and states["airflow"]["detail"]
    assert health["dag_runs"] == [] and {s["name"]: s["state"] for s in health["sources"]}["airflow"] == "down"
    assert api["requests_per_s"] >= api["rejected_per_s"] > 0 and api["errors_per_s"] == 0 == api["error_rate"]
    assert health["streaming"]["freshness_s"] > 0  # the age of the newest purchase in the lake

    # the next drain stores them: the group catches up, and the read model copies just those
    assert drain_user_events(cfg).stored == 3
    assert update_event_counts(cfg).events_counted == 3
    shop["events"] += late  # the shop the later tests check against
    want = f"{len(shop['events']):,} events"
    deadline = time.monotonic() + 30
    while True:
        health = get(dashboard, "/api/health")
        mongo = get(dashboard, "/api/activity")["sources"][0]
        if {(x["topic"], x["group"]): x["lag"] for x in health["lag"]}.get(key) == 0 and mongo["detail"] == want:
            break
        assert time.monotonic() < deadline, (health["lag"], mongo)
        time.sleep(0.5)


def test_stores_that_are_down_show_as_down_and_the_rest_keeps_working(shop):
    """MongoDB and PostgreSQL unreachable (ports nobody listens on): their panels say so,
    the lake's keep answering."""
    from shopstream_dashboard.main import create_app

    cfg = shop["cfg"]
    dead = dashboard_settings(
        cfg,
        mongo=cfg.mongo.model_copy(update={"uri": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"}),
        postgres=cfg.postgres.model_copy(update={"port": free_port()}),
    )
    with ServerThread(create_app(dead)) as server:
        deadline = time.monotonic() + 60
        while True:  # the lake loaded, and MongoDB's first look has ended
            activity = get(server, "/api/activity")
            if (
                get(server, "/api/sales")["purchases"] == len(shop["orders"])
                and activity["sources"][0]["state"] != "loading"
            ):
                break
            assert time.monotonic() < deadline, activity["sources"]
            time.sleep(0.5)
        assert {s["name"]: s["state"] for s in activity["sources"]} == {"mongodb": "down", "lake": "up"}
        assert sum(m["purchases"] for m in activity["purchases"]) > 0
        repeat = get(server, "/api/repeat-buyers")
        assert repeat["source"]["state"] == "down" and repeat["source"]["error"]
        user = shop["orders"][0]["UserId"]
        lookup = get(server, f"/api/users/{user}")
        assert lookup["event_counts"] is None and lookup["sessions"] is None and lookup["purchases"]
        # the sessions and the names: both stores down, said so; the products shown by their ids
        sessions = wait_until(server.url, "/api/sessions", lambda s: all(x["state"] != "loading" for x in s["sources"]))
        assert [(x["name"], x["state"]) for x in sessions["sources"]] == [("mongodb", "down"), ("postgresql", "down")]
        sales = get(server, "/api/sales")
        assert sales["sources"][1]["state"] == "down"
        assert all(r["Name"] == r["ProductId"] for r in sales["by_revenue"])
        while not get(server, "/api/health")["services"]:
            time.sleep(0.5)
        states = {s["name"]: s["state"] for s in get(server, "/api/health")["services"]}
        assert states["mongodb"] == states["postgresql"] == "down" and states["s3"] == states["kafka"] == "up"


def expected_places(events: list[dict], orders: list[dict]) -> tuple[Counter, dict]:
    """Events (clicks) and revenue per (country, region, city), by each user's known sender."""
    clicks, revenue = Counter(), defaultdict(Decimal)
    for e in events:
        clicks[sender(e["UserId"])[4]] += 1
    for o in orders:
        revenue[sender(o["UserId"])[4]] += sum((amount(x) for x in o["Products"]), Decimal(0))
    return clicks, {k: money(v) for k, v in revenue.items()}


def test_places_shares_bots_and_the_lookup_follow_the_senders(dashboard, shop):
    """A known browser from an address in a known city: that browser and city in MongoDB, in
    the user lookup and in the places; the shares of users by browser and device; the bots'
    share, and the crawler counted only when asked."""
    cfg = shop["cfg"]
    user = Counter(o["UserId"] for o in shop["orders"]).most_common(1)[0][0]
    _, _, browser, device, (country, region, city) = sender(user)
    client = mongo_client(cfg.mongo)
    try:
        stored = ensure_collections(client[cfg.mongo.database], cfg.batch).events.find_one({"UserId": user})
    finally:
        client.close()
    assert (stored["Enrichment"]["Browser"], stored["Enrichment"]["City"]) == (browser, city)
    agent = get(dashboard, f"/api/users/{user}")["agent"]
    assert (agent["Browser"], agent["Device"], agent["IsBot"]) == (browser, device, False)
    assert (agent["Country"], agent["Region"], agent["City"]) == (country, region, city)

    for include in (False, True):
        events = shop["events"] if include else humans(shop["events"])
        clicks, revenue = expected_places(events, shop["orders"])
        got = get(dashboard, "/api/places", n=100, include_bots=include)
        assert got["include_bots"] is include and [s["state"] for s in got["sources"]] == ["up", "up"]
        assert {(r["Country"], r["Region"], r["City"]): r["Events"] for r in got["cities_by_events"]} == clicks
        assert {(r["Country"], r["Region"], r["City"]): r["Revenue"] for r in got["cities_by_revenue"]} == revenue
        countries = Counter()
        for (c, _, _), n in clicks.items():
            countries[c] += n
        assert {r["Country"]: r["Events"] for r in got["countries_by_events"]} == countries

        users = {e["UserId"] for e in events}
        audience = get(dashboard, "/api/audience", include_bots=include)
        assert audience["users"] == len(users)
        assert {s["Name"]: s["Users"] for s in audience["browsers"]} == Counter(sender(u)[2] for u in users)
        assert {s["Name"]: s["Users"] for s in audience["devices"]} == Counter(sender(u)[3] for u in users)
        bots = audience["bots"]
        everyone = {e["UserId"] for e in shop["events"]}
        assert (bots["users"], bots["all_users"]) == (sum(map(is_bot, everyone)), len(everyone)) == (1, USERS + 1)
        bot_events = sum(is_bot(e["UserId"]) for e in shop["events"])
        assert (bots["events"], bots["all_events"]) == (bot_events, len(shop["events"]))
        assert bots["event_share"] == round(bot_events / len(shop["events"]), 4)
    # the crawler's page views count in the funnel only when asked
    with_bots = get(dashboard, "/api/funnel", window="all", include_bots=True)["steps"][0]["users"]
    assert with_bots == get(dashboard, "/api/funnel", window="all")["steps"][0]["users"] + 1


def test_openapi_documents_every_data_call(dashboard):
    spec = get(dashboard, "/openapi.json")
    for path in (
        "/api/config",
        "/api/activity",
        "/api/funnel",
        "/api/sales",
        "/api/repeat-buyers",
        "/api/users/{user_id}",
        "/api/places",
        "/api/audience",
        "/api/sessions",
        "/api/health",
    ):
        ok = spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok.get("$ref"), path


# -- the page, in a real browser -------------------------------------------------------------
def test_page_in_chromium_shows_the_stores_numbers_and_looks_up_a_user(dashboard, shop):
    from shopstream_stack.browser import chromium_page

    sales = expected_sales(shop["orders"], 10)
    funnel_1h = expected_funnel(shop["events"], shop["orders"], datetime.now(UTC) - timedelta(hours=1))
    funnel_all = expected_funnel(shop["events"], shop["orders"], None)
    user = Counter(o["UserId"] for o in shop["orders"]).most_common(1)[0][0]
    counts = Counter(e["EventName"] for e in shop["events"] if e["UserId"] == user)
    clicks, _ = expected_places(humans(shop["events"]), shop["orders"])
    top_city = sorted(clicks.items(), key=lambda x: (-x[1], x[0]))[0][0]
    everyone = {e["UserId"] for e in shop["events"]}
    bot_events = sum(is_bot(e["UserId"]) for e in shop["events"])
    best = sales["by_revenue"][0]
    known_best = next(r for r in sales["by_revenue"] if r["ProductId"] in CATALOGUE)
    days, products = session_docs(shop["cfg"])
    top_viewed = sorted(products, key=lambda d: (-d.get("Viewed", 0), d["_id"]))[0]["_id"]
    busiest = day_metrics(max(days, key=lambda d: (d.get("Sessions", 0), d["Day"])))
    errors: list[str] = []
    with chromium_page() as page:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(dashboard.url + "/")
        page.wait_for_function(
            f"document.querySelector('#kpi-purchases')?.textContent.trim() === '{sales['purchases']:,}'", timeout=30_000
        )
        assert page.text_content("#kpi-orders").strip() == f"{sales['orders']:,}"
        # the page asks as often as the dashboard reads the stores (refresh_s = 1 here), from /api/config
        page.wait_for_function("document.querySelector('#refresh-s').textContent.trim() === '1'", timeout=10_000)
        assert page.text_content("#kpi-revenue").strip().endswith(f"{sales['revenue']:,.2f}")
        for chart in (
            "chart-events",
            "chart-purchases",
            "chart-funnel",
            "chart-top-revenue",
            "chart-top-units",
            "chart-payments",
            "chart-categories",
            "chart-places-events",
            "chart-places-revenue",
            "chart-browsers",
            "chart-devices",
        ):
            page.wait_for_selector(f"#{chart} .main-svg", timeout=15_000)
        # the city chart names the user's known city, and the top one first (top to bottom)
        city_ticks = (
            "els => els.map(e => [e.getBoundingClientRect().top, e.textContent]).sort((a, b) => a[0] - b[0])"
            ".map(x => x[1])"
        )
        label = lambda place: f"{place[2]}, {place[0]}" if place[2] != "unknown" else f"unknown, {place[0]}"  # noqa: E731
        page.wait_for_function(
            f"[...document.querySelectorAll('#chart-places-events .ytick text')].map(e => e.textContent)"
            f".includes({label(sender(user)[4])!r})",
            timeout=15_000,
        )
        assert page.eval_on_selector_all("#chart-places-events .ytick text", city_ticks)[0] == label(top_city)
        assert page.locator("#chart-places-events .bars .point").count() == len(clicks)
        # the shares: one slice per browser of the users who are no bots, and the bots' share
        browsers = {sender(u)[2] for u in everyone if not is_bot(u)}
        assert page.locator("#chart-browsers .slice").count() == len(browsers)
        page.wait_for_function(
            f"document.querySelector('#bots-share').dataset.botEvents === '{bot_events}'", timeout=15_000
        )
        assert page.text_content("#bots-share").startswith(
            f"bots: {100 / len(everyone):.1f}% of users (1 of {len(everyone)}), "
        )
        page.select_option("#places-level", "countries")
        page.wait_for_function(
            f"[...document.querySelectorAll('#chart-places-events .ytick text')].map(e => e.textContent)"
            f".includes({sender(user)[4][0]!r})",
            timeout=15_000,
        )
        # a city found by name, wherever it ranks: its one bar, labelled with its rank
        page.select_option("#places-level", "cities")
        ranked = [k for k, _ in sorted(clicks.items(), key=lambda x: (-x[1], x[0]))]
        rank, place = max((i + 1, k) for i, k in enumerate(ranked) if k[2] != "unknown")
        page.fill("#places-find", place[2].lower())
        want = label(place) if rank == 1 else f"#{rank} {label(place)}"
        page.wait_for_function(
            "(() => { const t = [...document.querySelectorAll('#chart-places-events .ytick text')]"
            f".map(e => e.textContent); return t.length === 1 && t[0] === {want!r}; }})()",
            timeout=15_000,
        )
        assert page.text_content(".places-which").startswith("The cities matching")
        page.fill("#places-find", "")
        bars = page.locator("#chart-top-revenue .bars .point").count()
        assert bars == len(sales["by_revenue"])
        # best sellers by name (by id where the catalogue has none), the best one on top
        revenue_ticks = page.eval_on_selector_all("#chart-top-revenue .ytick text", city_ticks)
        assert revenue_ticks[0] == best["Name"] and known_best["Name"] in revenue_ticks
        categories = {c for c in (named(r["ProductId"])["Category"] for r in sales["by_revenue"])}
        assert categories <= set(page.eval_on_selector_all("#chart-categories .ytick text", city_ticks))
        # the sessions panel: the busiest day's figures as the contract reads its document
        row = f"#session-days tr[data-day='{busiest['Day']}']"
        page.wait_for_selector(row, timeout=15_000)
        assert page.text_content(f"{row} .sessions").strip() == f"{busiest['Sessions']:,}"
        assert page.text_content(f"{row} .users").strip() == f"{busiest['Users']:,}"
        for cls, key in (("conversion", "ConversionRate"), ("bounce", "BounceRate"), ("bots", "BotShare")):
            assert float(page.get_attribute(f"{row} .{cls}", "data-value")) == busiest[key], key
        assert page.locator("#engagement tbody tr").count() == min(10, len(products))
        assert page.text_content(f"#engagement tr[data-product={top_viewed}] .product") == named(top_viewed)["Name"]
        users = lambda step: page.text_content(f"#funnel-table tr[data-step={step}] .users").strip()  # noqa: E731
        page.wait_for_function(
            f"document.querySelector('#funnel-table tr[data-step=PageVisited] .users')?.textContent.trim() === "
            f"'{funnel_1h[0]:,}'",
            timeout=15_000,
        )
        assert [users(s) for s in ("PageVisited", "AddedBasket", "Purchased")] == [f"{n:,}" for n in funnel_1h]
        page.select_option("#funnel-window", "all")
        page.wait_for_function(
            f"document.querySelector('#funnel-table tr[data-step=PageVisited] .users')?.textContent.trim() === "
            f"'{funnel_all[0]:,}'",
            timeout=15_000,
        )
        assert [users(s) for s in ("PageVisited", "AddedBasket", "Purchased")] == [f"{n:,}" for n in funnel_all]
        page.check("#include-bots")  # the crawler's page views count too
        page.wait_for_function(
            f"document.querySelector('#funnel-table tr[data-step=PageVisited] .users')?.textContent.trim() === "
            f"'{funnel_all[0] + 1:,}'",
            timeout=15_000,
        )
        page.uncheck("#include-bots")
        page.wait_for_selector("#repeat-buyers tbody tr", timeout=15_000)
        assert page.text_content("#repeat-total").strip() == f"{len(shop['repeats']):,}"
        page.wait_for_selector("#services .badge[data-service=mongodb].up", timeout=15_000)
        assert page.locator("#services .badge[data-service=streaming].down").count() == 1

        page.fill("#user-id", user)
        page.click("#user-form [type=submit]")
        page.wait_for_selector("#user-counts tr[data-event]", timeout=15_000)
        _, _, browser, device, (_, _, city) = sender(user)
        assert page.get_attribute("#user-agent dd[data-browser]", "data-browser") == browser
        assert page.get_attribute("#user-agent dd[data-device]", "data-device") == device
        assert page.get_attribute("#user-agent dd[data-city]", "data-city") == city
        shown = {name: page.text_content(f"#user-counts tr[data-event={name}] .count").strip() for name in counts}
        assert shown == {name: f"{n:,}" for name, n in counts.items()}
        assert page.locator("#user-purchases tbody tr").count() == sum(o["UserId"] == user for o in shop["orders"])
        assert page.locator("#user-sessions tbody tr").count() == 1  # the user's one session
        if user in shop["customers"]:
            assert page.get_attribute("#user-customer dd[data-home-city]", "data-home-city") == city
        else:
            assert page.text_content("#user-customer dd") == "no customer record"

        # every store behind these panels answers (airflow and streaming, in the health card, do not run here)
        for panel in ("activity", "funnel", "sales", "places", "audience", "sessions", "repeat", "user"):
            assert page.locator(f".card.down[data-panel={panel}]").count() == 0, page.text_content(
                f".card[data-panel={panel}] .panel-error"
            )
        ticks = page.eval_on_selector_all(
            "#chart-funnel .ytick text", "els => els.map(e => [e.getBoundingClientRect().top, e.textContent])"
        )
        assert [name for _, name in sorted(ticks)] == ["PageVisited", "AddedBasket", "Purchased"]  # top to bottom
        out = REPO_ROOT / "reports" / "dashboard"
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "test-dashboard.png"), full_page=True)
    assert not errors, errors


def test_health_and_page_show_the_offset_rewinds(dashboard, shop):
    """Rewinds of both stages, recorded as the drain and the streaming source record them
    (test_offset_rewinds makes real ones), show in /api/health and in one line under the lag."""
    from shopstream.adapters.mongo import collections, database, mongo_client
    from shopstream.rewinds import Rewind, append_line, drain_document, streaming_file
    from shopstream_stack.browser import chromium_page

    cfg = shop["cfg"]
    none = {"count": 0, "by_stage": {}, "latest": []}
    deadline = time.monotonic() + 30
    while (health := get(dashboard, "/api/health"))["rewinds"] != none:
        assert time.monotonic() < deadline, health["rewinds"]
        time.sleep(0.5)
    now = datetime.now(UTC).replace(microsecond=0)
    drained = Rewind("drain", cfg.kafka.user_events_topic, 1, 11, 6, 14, now - timedelta(minutes=2), "records replaced")
    streamed = Rewind(
        "streaming", cfg.kafka.purchases_topic, 0, 9, 6, 8, now - timedelta(seconds=30), "position past the end"
    )
    client = mongo_client(cfg.mongo)
    rewinds = collections(database(client, cfg.mongo), cfg.batch).rewinds
    rewinds.insert_one(drain_document(drained, cfg.batch.consumer_group, "-"))
    append_line(streaming_file(cfg), streamed, query="purchases")
    try:
        deadline = time.monotonic() + 30
        while (health := get(dashboard, "/api/health"))["rewinds"]["count"] != 2:
            assert time.monotonic() < deadline, health["rewinds"]
            time.sleep(0.5)
        got = health["rewinds"]
        assert got["by_stage"] == {"drain": 1, "streaming": 1}
        assert [
            (r["stage"], r["topic"], r["partition"], r["committed"], r["resumed_from"], r["end"], r["reason"])
            for r in got["latest"]
        ] == [
            ("streaming", streamed.topic, 0, 9, 6, 8, "position past the end"),
            ("drain", drained.topic, 1, 11, 6, 14, "records replaced"),
        ]
        assert datetime.fromisoformat(got["latest"][0]["at"]) == streamed.at
        with chromium_page() as page:
            page.goto(dashboard.url + "/")
            page.wait_for_function(
                "document.querySelector('#rewinds').textContent.startsWith('offset rewinds: 2')", timeout=30_000
            )
            line = page.text_content("#rewinds")
            assert line.startswith(
                f"offset rewinds: 2 (drain 1, streaming 1); last: streaming {streamed.topic}-0 "
                "read again from 6 (committed 9, end 8: position past the end), "
            ), line
            assert page.locator("#rewinds.warn").count() == 1
    finally:
        rewinds.delete_many({})
        streaming_file(cfg).unlink()
        client.close()


# -- the read model's file: a restart resumes, each event counted once ------------------------
def stored_events(events: list[dict], stored_at: datetime, offset: int) -> list[dict]:
    """The documents the drain would store for these events, stamped `stored_at`."""
    docs = []
    for i, e in enumerate(events):
        agent, address, *_ = sender(e["UserId"])
        record = UserEventRecord.model_validate(
            {
                **e,
                "EventId": str(uuid.uuid4()),
                "IngestedAt": datetime.now(UTC).isoformat(),
                "ClientIp": address.rsplit(".", 1)[0] + ".0",  # as the API stores it: its /24
                "UserAgent": agent,
            }
        )
        doc = event_document(record, 0, offset + i)
        doc["StoredAt"] = stored_at
        docs.append(doc)
    return docs


def wait_events(url: str, want: int, timeout_s: float = 120) -> dict:
    """The events source once it says `want` events."""
    deadline = time.monotonic() + timeout_s
    while True:
        source = get_url(url, "/api/activity")["sources"][0]
        if source["detail"] == f"{want:,} events":
            return source
        assert time.monotonic() < deadline, source
        time.sleep(0.5)


def get_url(url: str, path: str, **params) -> dict:
    r = httpx.get(f"{url}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_restart_resumes_from_the_read_model_and_counts_each_event_once(shop):
    """A dashboard reads some events, then new ones, and stops after one more was stored late
    (readable after its StoredAt, which is before the newest one read). Then an event it read
    is deleted. A second dashboard on the same read model file resumes: it counts the late
    event once it has settled, counts nothing twice although it reads the settling range
    again, and still counts the deleted event (it did not read the history again)."""
    from shopstream_dashboard.main import create_app

    cfg = shop["cfg"]
    cfg = cfg.model_copy(update={"mongo": cfg.mongo.model_copy(update={"database": f"{cfg.mongo.database}_restart"})})
    model = Path(tempfile.mkdtemp(prefix="shopstream-dash-model-")) / "readmodel.duckdb"
    client = mongo_client(cfg.mongo)
    events = ensure_collections(client[cfg.mongo.database], cfg.batch).events
    first, fresh, late = shop["events"][:30], shop["events"][30:-1], shop["events"][-1:]
    assert fresh, "the shop must have more than 31 events"
    dash = dashboard_settings(cfg, read_model=model)
    events.insert_many(stored_events(first, datetime.now(UTC), 0))
    with ServerThread(create_app(dash)) as server:
        wait_events(server.url, len(first))
        t1 = datetime.now(UTC)
        events.insert_many(stored_events(fresh, t1, 1000))
        wait_events(server.url, len(first) + len(fresh))
        # stored just before the newest event read, readable only now: well within events_settle_s (30 s)
        events.insert_many(stored_events(late, t1 - timedelta(milliseconds=1), 2000))
    events.delete_one({"_id": events.find_one({}, sort=[("StoredAt", 1)])["_id"]})
    with ServerThread(create_app(dash)) as server:
        wait_events(server.url, len(shop["events"]))  # exactly: a copy counted twice would overshoot
        visited = {e["UserId"] for e in humans(shop["events"]) if e["EventName"] == "PageVisited"}
        wait_synced(server.url, len(shop["orders"]), len(visited))  # the lake too
        funnel = get_url(server.url, "/api/funnel", window="all")
        assert [s["users"] for s in funnel["steps"]] == expected_funnel(shop["events"], shop["orders"], None)
        activity = get_url(server.url, "/api/activity", minutes=180)
        since = datetime.fromisoformat(activity["as_of"]) - timedelta(minutes=180)
        recent = Counter(e["EventName"] for e in shop["events"] if ts(e) >= since)
        for name in NAMES:
            got = round(sum(p["per_s"] * activity["bucket_s"] for p in activity["events"][name]))
            assert got == recent[name], name
    client.close()
