"""The dashboard's read model on its own (a DuckDB file, no store): its rollups give the
numbers a plain computation over every event and purchase gives, however often an event is
read again, across a reopen of the file, for events stamped ahead of the clock, for an
order that comes back in a later purchase, and with enriched events and purchases (bots
left out, places, browser and device shares, events and files from before enrichment); the
copies of small tables (products, customers, session days, product engagement) name the
products, give revenue by category and the contracts' session metrics."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from shopstream.contracts.dimensions import Customer, ProductInfo
from shopstream.contracts.sessions import SessionDay
from shopstream_dashboard import readmodel
from shopstream_dashboard.readmodel import ENRICHMENT, ReadModel
from shopstream_dashboard.routes import bucket_seconds
from shopstream_dashboard.sync import engagement, session_day

NAMES = ["PageVisited", "AddedBasket", "CheckedProductReviews"]
TS = pa.timestamp("us", tz="UTC")
LINE = pa.struct(
    [
        ("ProductId", pa.string()),
        ("ItemCount", pa.int32()),
        ("ItemPrice", pa.decimal128(10, 2)),
        ("ItemDiscount", pa.decimal128(10, 2)),
    ]
)


def events_table(events: list[dict], enriched: bool = False) -> pa.Table:
    """As the sync hands events over; `enriched`: with their Enrichment (None: stored before it)."""
    columns = {
        "EventId": pa.array([e["EventId"] for e in events], pa.string()),
        "UserId": pa.array([e["UserId"] for e in events], pa.string()),
        "EventName": pa.array([e["EventName"] for e in events], pa.string()),
        "TimeStamp": pa.array([e["TimeStamp"] for e in events], TS),
        "StoredAt": pa.array([e["StoredAt"] for e in events], TS),
    }
    if enriched:
        columns["Enrichment"] = pa.array([e["Enrichment"] for e in events], ENRICHMENT)
    return pa.table(columns)


def purchases_table(orders: list[dict], enriched: bool = False) -> pa.Table:
    """As the lake's files hold them; `enriched`: with the Enrichment column (older files have none)."""
    extra = {"Enrichment": pa.array([o["Enrichment"] for o in orders], ENRICHMENT)} if enriched else {}
    return pa.table(
        {
            **extra,
            "EventId": [o["EventId"] for o in orders],
            "OrderId": [o["OrderId"] for o in orders],
            "UserId": [o["UserId"] for o in orders],
            "TimeStamp": pa.array([o["TimeStamp"] for o in orders], TS),
            "IngestedAt": pa.array([o["TimeStamp"] for o in orders], TS),
            "TotalPrice": pa.array([o["TotalPrice"] for o in orders], pa.decimal128(10, 2)),
            "PaymentType": [o["PaymentType"] for o in orders],
            "Products": pa.array([o["Products"] for o in orders], pa.list_(LINE)),
        }
    )


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def make_events(rnd: random.Random, now: datetime, n: int) -> list[dict]:
    return [
        {
            "EventId": f"e{i}",
            "UserId": f"u{rnd.randint(0, 30)}",
            "EventName": rnd.choice(NAMES),
            "TimeStamp": now - timedelta(seconds=rnd.randint(1, 20_000)),
            "StoredAt": now - timedelta(seconds=20) + timedelta(milliseconds=i),  # after `settled`: may be read again
        }
        for i in range(n)
    ]


def funnel_users(events: list[dict], orders: list[dict], since: datetime, until: datetime) -> list[int]:
    def users(rows, name=None):
        return {
            r["UserId"] for r in rows if since < r["TimeStamp"] <= until and (name is None or r["EventName"] == name)
        }

    visited = users(events, "PageVisited")
    basket = users(events, "AddedBasket") & visited
    return [len(visited), len(basket), len(users(orders) & basket)]


def rates(model: ReadModel, as_of: datetime, minutes: int, bucket_s: int = 10) -> Counter:
    got = model.event_rates(as_of, minutes, bucket_s)
    return Counter(
        {k: round(sum(p["per_s"] * bucket_s for p in v)) for k, v in got.items() if any(p["per_s"] for p in v)}
    )


def test_events_read_again_are_counted_once_across_a_reopen(tmp_path: Path, now: datetime):
    rnd = random.Random(7)
    events = make_events(rnd, now, 2_000)
    path = tmp_path / "readmodel.duckdb"
    model = ReadModel(path, "stores")
    settled = now - timedelta(seconds=30)
    # a first read of everything, in chunks, then the sync's looks: overlapping, reading copies
    for i in range(0, 1_000, 300):
        model.add_events(events_table(events[i : min(i + 300, 1_000)]), now, settled)
    model.add_events(events_table([]), now, settled, cursor=(settled, events[999]["StoredAt"]))
    for lo, hi in [(900, 1_500), (1_200, 2_000), (0, 2_000)]:
        model.add_events(events_table(events[lo:hi]), now, settled, cursor=(settled, events[hi - 1]["StoredAt"]))
    model.close()
    model = ReadModel(path, "stores")
    assert model.events_cursor() == (settled, events[-1]["StoredAt"])
    model.add_events(events_table(events[1_500:]), now, settled, cursor=(settled, events[-1]["StoredAt"]))
    assert model.counts()["events"] == len(events)
    for minutes in (15, 60, 180):  # each chart with the route's bucket
        since = now - timedelta(minutes=minutes)
        expected = Counter(e["EventName"] for e in events if e["TimeStamp"] >= since)
        assert rates(model, now, minutes, bucket_seconds(minutes)) == expected, minutes
    for window, span in (("15m", timedelta(minutes=15)), ("1h", timedelta(hours=1)), ("all", None)):
        since = now - span if span else datetime(1, 1, 1, tzinfo=UTC)
        assert [s["users"] for s in model.funnel(now, window)] == funnel_users(events, [], since, now)


def test_a_half_done_first_read_and_other_stores_start_over(tmp_path: Path, now: datetime):
    path = tmp_path / "readmodel.duckdb"
    events = make_events(random.Random(3), now, 50)
    model = ReadModel(path, "stores")
    model.add_events(events_table(events), now, now)  # no cursor saved: the first read did not end
    assert model.counts()["events"] == 50
    model.close()
    model = ReadModel(path, "stores")
    assert model.counts()["events"] == 0 and model.events_cursor() is None
    model.add_events(events_table(events), now, now, cursor=(now, now))
    model.close()
    assert ReadModel(path, "stores").counts()["events"] == 50
    assert ReadModel(tmp_path / "other.duckdb", "stores").counts()["events"] == 0
    model = ReadModel(path, "other stores")
    assert model.counts()["events"] == 0 and model.events_cursor() is None


def test_a_file_of_an_older_version_of_the_tables_is_rebuilt(tmp_path: Path, now: datetime, monkeypatch):
    """An upgrade finds the tables of an older version (here: `sales_totals` one column short,
    and a snapshot table of an older contract) with their rows: they are built again, empty."""
    path = tmp_path / "readmodel.duckdb"
    events = make_events(random.Random(5), now, 40)
    model = ReadModel(path, "stores")
    model.add_events(events_table(events), now, now, cursor=(now, now))
    model.close()
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE sales_totals DROP COLUMN Revenue")
        con.execute("UPDATE meta SET Value = 'an older stamp' WHERE Key = 'stamp'")
    model = ReadModel(path, "stores")
    assert model.counts() == {"events": 0, "purchases": 0} and model.events_cursor() is None
    assert model.sales(5)["revenue"] == 0
    model.add_events(events_table(events), now, now, cursor=(now, now))
    assert model.counts()["events"] == 40
    model.close()

    # a contract behind a snapshot table gains a field; nobody raised VERSION
    class Wider(ProductInfo):
        Colour: str

    monkeypatch.setitem(readmodel.SNAPSHOTS, "products", (Wider, "ProductId"))
    model = ReadModel(path, "stores")
    assert model.counts()["events"] == 0
    model.close()
    with duckdb.connect(str(path)) as con:
        assert con.execute("DESCRIBE products").fetchall()[-1][0] == "Colour"


def test_the_longest_chart_adds_up_to_its_events_one_per_bucket(tmp_path: Path, now: datetime):
    """The 3-hour chart's 120 s buckets, each holding one event: its rates times the bucket size
    add up to the events exactly (rates rounded to 3 decimals lost 0.04 of an event a bucket)."""
    model = ReadModel(tmp_path / "readmodel.duckdb", "stores")
    bucket_s = bucket_seconds(180)  # the route's, 120 s
    events = [
        {
            "EventId": f"e{i}",
            "UserId": "u1",
            "EventName": "PageVisited",
            "StoredAt": now,
            "TimeStamp": now - timedelta(seconds=bucket_s // 2 + bucket_s * i),
        }
        for i in range(60)
    ]
    model.add_events(events_table(events), now, now, cursor=(now, now))
    assert rates(model, now, 180, bucket_s) == Counter({"PageVisited": 60})


def test_the_longest_chart_finds_its_oldest_second_when_a_sync_ran_after_its_as_of(tmp_path: Path, now: datetime):
    """A chart's `as_of` is a whole second, and a sync can commit between it and the chart's
    query: the sync's clock is then ahead of the chart's, and what it drops as too old must
    still leave the chart's first second."""
    from shopstream_dashboard.readmodel import ACTIVITY_MAX_MINUTES

    model = ReadModel(tmp_path / "readmodel.duckdb", "stores")
    as_of = now
    oldest = as_of - timedelta(minutes=ACTIVITY_MAX_MINUTES)  # the first second of the 3-hour chart
    events = [
        {"EventId": f"e{i}", "UserId": "u1", "EventName": "PageVisited", "TimeStamp": ts, "StoredAt": as_of}
        for i, ts in enumerate([oldest, oldest + timedelta(milliseconds=600), oldest - timedelta(milliseconds=1)])
    ]
    sync_clock = as_of + timedelta(milliseconds=900)  # a sync that started after the chart's as_of
    model.add_events(events_table(events), sync_clock, as_of, cursor=(as_of, as_of))
    assert rates(model, as_of, ACTIVITY_MAX_MINUTES) == Counter({"PageVisited": 2})  # not the one before `oldest`


def test_events_stamped_ahead_of_the_clock_count_once_their_time_has_come(tmp_path: Path, now: datetime):
    model = ReadModel(tmp_path / "readmodel.duckdb", "stores")
    ahead = now + timedelta(minutes=10)
    events = [
        {"EventId": "a", "UserId": "u1", "EventName": "PageVisited", "TimeStamp": now - timedelta(minutes=5)},
        {"EventId": "b", "UserId": "u1", "EventName": "PageVisited", "TimeStamp": ahead},
        {"EventId": "c", "UserId": "u1", "EventName": "AddedBasket", "TimeStamp": ahead},
    ]
    for e in events:
        e["StoredAt"] = now
    model.add_events(events_table(events), now, now - timedelta(seconds=30), cursor=(now, now))
    assert [s["users"] for s in model.funnel(now, "15m")] == [1, 0, 0]
    later = ahead + timedelta(minutes=1)
    assert [s["users"] for s in model.funnel(later, "15m")] == [1, 1, 0]  # not folded yet, still counted
    model.add_events(events_table([]), later, now, cursor=(now, now))  # a later sync folds them
    assert [s["users"] for s in model.funnel(later, "15m")] == [1, 1, 0]
    assert [s["users"] for s in model.funnel(later, "all")] == [1, 1, 0]


def random_lines(rnd: random.Random) -> list[dict[str, Any]]:
    """One to three product lines of ten products, some on sale."""
    return [
        {
            "ProductId": f"p{rnd.randint(0, 9)}",
            "ItemCount": rnd.randint(1, 3),
            "ItemPrice": Decimal(rnd.randint(100, 9_999)) / 100,
            "ItemDiscount": Decimal(rnd.choice([0, 50])) / 100,
        }
        for _ in range(rnd.randint(1, 3))
    ]


def test_sales_rollups_count_an_order_that_comes_back_once(tmp_path: Path, now: datetime):
    rnd = random.Random(11)
    orders: list[dict[str, Any]] = []
    for i in range(300):
        lines = random_lines(rnd)
        orders.append(
            {
                "EventId": f"x{i}",
                "OrderId": f"o{rnd.randint(0, 220)}",  # some orders in more than one purchase
                "UserId": f"u{rnd.randint(0, 40)}",
                "TimeStamp": now - timedelta(seconds=rnd.randint(1, 7_200)),
                "TotalPrice": sum(x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"]) for x in lines),
                "PaymentType": rnd.choice(["PayPal", "CreditCard"]),
                "Products": lines,
            }
        )
    path = tmp_path / "readmodel.duckdb"
    model = ReadModel(path, "stores")
    for i in range(0, 300, 70):
        model.add_purchases(purchases_table(orders[i : i + 70]), [f"file-{i}"])
        if i == 140:
            model.close()
            model = ReadModel(path, "stores")
    assert model.lake_files() == {f"file-{i}" for i in range(0, 300, 70)}
    got = model.sales(100)
    amount = lambda x: x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"])  # noqa: E731
    assert got["purchases"] == 300
    assert got["orders"] == len({o["OrderId"] for o in orders})
    assert got["revenue"] == float(sum(amount(x) for o in orders for x in o["Products"]))
    products = {r["ProductId"]: r for r in got["by_revenue"]}
    for p in {x["ProductId"] for o in orders for x in o["Products"]}:
        sold = [(o, x) for o in orders for x in o["Products"] if x["ProductId"] == p]
        assert products[p]["Units"] == sum(x["ItemCount"] for _, x in sold)
        assert products[p]["Revenue"] == float(sum(amount(x) for _, x in sold))
        assert products[p]["Orders"] == len({o["OrderId"] for o, _ in sold})
    for pay in got["payment_types"]:
        paid = [o for o in orders if o["PaymentType"] == pay["PaymentType"]]
        assert pay["Orders"] == len({o["OrderId"] for o in paid})
        assert pay["Revenue"] == float(sum(o["TotalPrice"] for o in paid))
    user = orders[0]["UserId"]
    mine = sorted((o for o in orders if o["UserId"] == user), key=lambda o: (-o["TimeStamp"].timestamp(), o["OrderId"]))
    assert [p["OrderId"] for p in model.user_purchases(user)] == [o["OrderId"] for o in mine]
    events = [{"UserId": o["UserId"], "EventName": n, "TimeStamp": o["TimeStamp"]} for o in orders for n in NAMES[:2]]
    table = events_table([{**e, "EventId": f"v{i}", "StoredAt": now} for i, e in enumerate(events)])
    model.add_events(table, now, now, cursor=(now, now))
    for window, span in (("1h", timedelta(hours=1)), ("all", None)):
        since = now - span if span else datetime(1, 1, 1, tzinfo=UTC)
        assert [s["users"] for s in model.funnel(now, window)] == funnel_users(events, orders, since, now)


# -- enrichment: places, shares, bots -------------------------------------------------------
UNKNOWN_PLACE = {"Country": "unknown", "Region": "unknown", "City": "unknown"}
AGENTS = [  # browser, OS, device, bot
    ("Chrome", "Windows", "desktop", False),
    ("Mobile Safari", "iOS", "mobile", False),
    ("Chrome Mobile", "Android", "mobile", False),
    ("Mobile Safari", "iOS", "tablet", False),
    ("Googlebot", "unknown", "bot", True),
]
PLACES = [
    {"Country": "GB", "Region": "England", "City": "Willesden"},
    {"Country": "SE", "Region": "Stockholm", "City": "Stockholm"},
    {"Country": "US", "Region": "Minnesota", "City": "Minneapolis"},
    {"Country": "US", "Region": "unknown", "City": "unknown"},
]


def enrichment(agent: tuple, place: dict) -> dict:
    browser, os, device, bot = agent
    return {"Browser": browser, "Os": os, "Device": device, "IsBot": bot, **place}


def unknown(e: dict | None) -> dict:
    return e or enrichment(("unknown", "unknown", "unknown", False), UNKNOWN_PLACE)


def enriched_shop(now: datetime) -> tuple[list[dict], list[dict]]:
    """40 users, each with an agent and a place (some switch browser halfway, a fifth are bots);
    a tenth of the events stored before enrichment (none); purchases by non-bots and a few by bots."""
    rnd = random.Random(17)
    users = {f"u{i}": (rnd.choice(AGENTS), rnd.choice(PLACES)) for i in range(40)}
    events = []
    for i in range(3_000):
        user = f"u{rnd.randint(0, 39)}"
        agent, place = users[user]
        if i > 1_500 and not agent[3] and int(user[1:]) % 3 == 0:  # switched to another (non-bot) browser
            agent = AGENTS[(AGENTS.index(agent) + 1) % 4]
        events.append(
            {
                "EventId": f"e{i:05d}",
                "UserId": user,
                "EventName": "PageVisited" if agent[3] else rnd.choice(NAMES),
                "TimeStamp": now - timedelta(seconds=rnd.randint(1, 20_000)),
                "StoredAt": now - timedelta(seconds=20) + timedelta(milliseconds=i),
                "Enrichment": None if rnd.random() < 0.1 else enrichment(agent, place),
            }
        )
    orders = []
    for i in range(200):
        user = f"u{rnd.randint(0, 39)}"
        agent, place = users[user]
        lines = random_lines(rnd)
        orders.append(
            {
                "EventId": f"x{i}",
                # some orders in more than one purchase; a bot's are its own (an order is a bot's or not)
                "OrderId": f"{'b' if agent[3] else 'o'}{rnd.randint(0, 150)}",
                "UserId": user,
                "TimeStamp": now - timedelta(seconds=rnd.randint(1, 7_200)),
                "TotalPrice": sum(x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"]) for x in lines),
                "PaymentType": rnd.choice(["PayPal", "CreditCard"]),
                "Products": lines,
                "Enrichment": enrichment(agent, place),
            }
        )
    return events, orders


def test_enriched_rollups_leave_bots_out_and_add_up_places_and_shares(tmp_path: Path, now: datetime):
    events, orders = enriched_shop(now)
    orders[-30:] = [{**o, "Enrichment": None} for o in orders[-30:]]  # a file from before enrichment
    bot = lambda x: unknown(x["Enrichment"])["IsBot"]  # noqa: E731
    assert any(bot(e) for e in events) and any(bot(o) for o in orders) and not all(bot(e) for e in events)
    path = tmp_path / "readmodel.duckdb"
    model = ReadModel(path, "stores")
    settled = now - timedelta(seconds=30)
    for lo, hi in [(0, 1_200), (900, 2_000), (0, 3_000)]:  # read again and again: counted once
        newest = events[hi - 1]["StoredAt"]
        model.add_events(events_table(events[lo:hi], enriched=True), now, settled, cursor=(settled, newest))
    model.add_purchases(purchases_table(orders[:100], enriched=True), ["a"])
    model.close()
    model = ReadModel(path, "stores")
    model.add_purchases(purchases_table(orders[100:170], enriched=True), ["b"])
    model.add_purchases(purchases_table(orders[170:]), ["old"])  # no Enrichment column: unknown, no bot

    for include in (False, True):
        ev = [e for e in events if include or not bot(e)]
        od = [o for o in orders if include or not bot(o)]
        since = datetime(1, 1, 1, tzinfo=UTC)
        assert [s["users"] for s in model.funnel(now, "all", include)] == funnel_users(ev, od, since, now)
        sales = model.sales(100, include)
        amount = lambda x: x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"])  # noqa: E731
        assert sales["purchases"] == len(od)
        assert sales["orders"] == len({o["OrderId"] for o in od})
        assert sales["revenue"] == float(sum(amount(x) for o in od for x in o["Products"]))
        units = Counter()
        for o in od:
            for x in o["Products"]:
                units[x["ProductId"]] += x["ItemCount"]
        assert {r["ProductId"]: r["Units"] for r in sales["by_units"]} == units
        assert sum(p["Orders"] for p in sales["payment_types"]) == len({(o["OrderId"], o["PaymentType"]) for o in od})

        def key(x: dict) -> tuple:
            e = unknown(x["Enrichment"])
            return e["Country"], e["Region"], e["City"]

        clicks, revenue = Counter(key(e) for e in ev), Counter()
        for o in od:
            revenue[key(o)] += sum(amount(x) for x in o["Products"])
        places = model.places(100, include)
        assert {(r["Country"], r["Region"], r["City"]): r["Events"] for r in places["cities_by_events"]} == clicks
        assert {(r["Country"], r["Region"], r["City"]): r["Revenue"] for r in places["cities_by_revenue"]} == {
            k: float(v) for k, v in revenue.items()
        }
        assert [(r["Country"], r["Region"], r["City"]) for r in model.places(3, include)["cities_by_events"]] == [
            k for k, _ in sorted(clicks.items(), key=lambda x: (-x[1], x[0]))[:3]
        ]
        # found by (part of) its name, in any case, wherever it ranks, with that rank
        for rank, k in enumerate((k for k, _ in sorted(clicks.items(), key=lambda x: (-x[1], x[0]))), 1):
            found = model.places(100, include, find=f" {k[2][1:].upper()} ")["cities_by_events"]
            assert (rank, k) in [(r["Rank"], (r["Country"], r["Region"], r["City"])) for r in found]
            assert all(k[2][1:].lower() in r["City"].lower() for r in found)
        countries = Counter()
        for (country, _, _), n in clicks.items():
            countries[country] += n
        assert {r["Country"]: r["Events"] for r in places["countries_by_events"]} == countries
        assert [r["Country"] for r in model.places(2, include)["countries_by_events"]] == [
            c for c, _ in sorted(countries.items(), key=lambda x: (-x[1], x[0]))[:2]
        ]

    # per user, the newest event (by TimeStamp, then EventId) decides browser, device, bot and place
    newest = {}
    for e in sorted(events, key=lambda e: (e["TimeStamp"], e["EventId"])):
        newest[e["UserId"]] = unknown(e["Enrichment"])
    for include in (False, True):
        counted = [n for n in newest.values() if include or not n["IsBot"]]
        got = model.audience(include)
        assert got["users"] == len(counted)
        assert {s["Name"]: s["Users"] for s in got["browsers"]} == Counter(n["Browser"] for n in counted)
        assert {s["Name"]: s["Users"] for s in got["devices"]} == Counter(n["Device"] for n in counted)
        assert sum(s["Share"] for s in got["devices"]) == pytest.approx(1, abs=0.001)
        bots = got["bots"]
        assert (bots["users"], bots["all_users"]) == (sum(n["IsBot"] for n in newest.values()), len(newest))
        assert (bots["events"], bots["all_events"]) == (sum(bot(e) for e in events), len(events))
        assert bots["event_share"] == round(bots["events"] / len(events), 4)
    for user, n in newest.items():
        got = model.user_agent(user)
        assert got is not None and {k: got[k] for k in n} == n, user
    assert model.user_agent("nobody") is None


# -- copies of small tables: names, categories, customers, sessions ---------------------------
CATEGORIES = ["Books", "Garden", "Toys"]


def catalogue(n: int) -> list[ProductInfo]:
    """Products p0 to p(n-1), in three categories."""
    return [
        ProductInfo(
            ProductId=f"p{i}", Name=f"Lamp no. {i}", Category=CATEGORIES[i % 3], Brand="Acme", ListPrice=Decimal("9.99")
        )
        for i in range(n)
    ]


def test_products_are_named_and_revenue_goes_by_category_unknown_where_not_in_the_catalogue(
    tmp_path: Path, now: datetime
):
    _, orders = enriched_shop(now)
    bot = lambda x: unknown(x["Enrichment"])["IsBot"]  # noqa: E731
    amount = lambda x: x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"])  # noqa: E731
    path = tmp_path / "readmodel.duckdb"
    model = ReadModel(path, "stores")
    model.add_purchases(purchases_table(orders, enriched=True), ["a"])
    # no catalogue yet (a fresh stack): every product by its id, in "unknown"
    got = model.sales(100, True)
    assert [(r["Name"], r["Category"]) for r in got["by_revenue"]] == [
        (r["ProductId"], "unknown") for r in got["by_revenue"]
    ]
    assert [c["Category"] for c in got["by_category"]] == ["unknown"]
    # a catalogue, replaced as a whole by a smaller one: p7 to p9 are no longer in it
    model.replace_snapshot("products", catalogue(20))
    known = {p.ProductId: p for p in catalogue(7)}
    model.replace_snapshot("products", list(known.values()))
    model.close()
    model = ReadModel(path, "stores")  # the copy is in the file
    assert model.snapshot_rows("products") == 7
    for include in (False, True):
        revenue, units, sold = defaultdict(Decimal), Counter(), defaultdict(set)
        for o in orders:
            if include or not bot(o):
                for x in o["Products"]:
                    category = known[x["ProductId"]].Category if x["ProductId"] in known else "unknown"
                    revenue[category] += amount(x)
                    units[category] += x["ItemCount"]
                    sold[category].add(x["ProductId"])
        got = model.sales(100, include)
        assert [c["Category"] for c in got["by_category"]] == sorted(revenue, key=lambda c: (-revenue[c], c))
        assert {c["Category"]: (c["Revenue"], c["Units"], c["Products"]) for c in got["by_category"]} == {
            c: (float(revenue[c]), units[c], len(sold[c])) for c in revenue
        }
        whole = sum(revenue.values())
        assert {c["Category"]: c["Share"] for c in got["by_category"]} == {
            c: round(float(v / whole), 4) for c, v in revenue.items()
        }
        for rows in (got["by_revenue"], got["by_units"]):
            for r in rows:
                p = known.get(r["ProductId"])
                assert (r["Name"], r["Category"]) == ((p.Name, p.Category) if p else (r["ProductId"], "unknown"))
    # a user's purchases name their lines' products, in line order
    user = orders[0]["UserId"]
    for got_p in model.user_purchases(user):
        order = next(o for o in orders if o["OrderId"] == got_p["OrderId"] and o["UserId"] == user)
        assert [(x["ProductId"], x["Name"]) for x in got_p["Products"]] == [
            (x["ProductId"], known[x["ProductId"]].Name if x["ProductId"] in known else x["ProductId"])
            for x in order["Products"]
        ]
    assert model.product_names(["p1", "p9"]) == {
        "p1": {"Name": "Lamp no. 1", "Category": "Garden"},
        "p9": {"Name": "p9", "Category": "unknown"},
    }
    # another store's file: the copies go with the rest
    assert ReadModel(path, "other stores").snapshot_rows("products") == 0


def test_customers_are_looked_up_from_their_copy(tmp_path: Path):
    model = ReadModel(tmp_path / "readmodel.duckdb", "stores")
    people = [
        Customer(UserId=f"u{i}", SignupDate=date(2024, 1, 1 + i), HomeCountry="SE", HomeCity="Lund") for i in range(5)
    ]
    model.replace_snapshot("customers", people)
    assert model.customer("u3") == {"SignupDate": date(2024, 1, 4), "HomeCountry": "SE", "HomeCity": "Lund"}
    assert model.customer("nobody") is None
    model.replace_snapshot("customers", [])
    assert model.customer("u3") is None


def test_session_days_and_engagement_read_as_the_contracts_define_them(tmp_path: Path):
    """Documents as the batch's sessions task leaves them (sums never incremented are absent),
    copied in: the latest days newest first, each as `SessionDay.metrics()` of its document; the
    most viewed products with `ProductEngagement.rates()` and their names."""
    rnd = random.Random(23)
    day_docs = []
    for d in range(12):
        day = (date(2025, 3, 1) + timedelta(days=d)).isoformat()
        sessions = rnd.randint(0, 40)
        doc = {"_id": day, "Day": day, "BotSessions": rnd.randint(0, 5)}
        if sessions:
            doc |= {
                "Sessions": sessions,
                "Users": rnd.randint(1, sessions),
                "Bounces": rnd.randint(0, sessions),
                "Converted": rnd.randint(0, sessions),
                "DurationMs": rnd.randint(0, 10**7),
                "Pages": rnd.randint(sessions, 5 * sessions),
                "Orders": rnd.randint(0, sessions),
                "RevenueCents": rnd.randint(0, 10**6),
            }
        day_docs.append(doc)
    rnd.shuffle(day_docs)
    product_docs = [
        {"_id": f"p{i}", "Viewed": v, **({"Added": a} if (a := rnd.randint(0, v)) else {}), "Bought": rnd.randint(0, a)}
        for i in range(15)
        for v in [rnd.randint(1, 50)]
    ]
    model = ReadModel(tmp_path / "readmodel.duckdb", "stores")
    model.replace_snapshot("session_days", [session_day(d) for d in day_docs])
    model.replace_snapshot("product_engagement", [engagement(d) for d in product_docs])
    model.replace_snapshot("products", catalogue(10))
    names = {p.ProductId: p for p in catalogue(10)}

    got = model.sessions(7, 5)
    newest = sorted(day_docs, key=lambda d: d["Day"], reverse=True)[:7]
    assert got["days"] == [
        SessionDay(**{k: v for k, v in d.items() if k != "_id"}).metrics().model_dump() for d in newest
    ]
    top = sorted(product_docs, key=lambda d: (-d["Viewed"], d["_id"]))[:5]
    assert [p["ProductId"] for p in got["products"]] == [d["_id"] for d in top]
    for p, d in zip(got["products"], top, strict=True):
        assert (p["Viewed"], p["Added"], p["Bought"]) == (d["Viewed"], d.get("Added", 0), d["Bought"])
        added = d.get("Added", 0)
        assert p["ViewToBasket"] == round(added / d["Viewed"], 4)
        assert p["BasketToPurchase"] == (round(d["Bought"] / added, 4) if added else 0.0)
        known = names.get(d["_id"])
        assert (p["Name"], p["Category"]) == ((known.Name, known.Category) if known else (d["_id"], "unknown"))
    # replaced as a whole: a day gone from MongoDB is gone here too
    model.replace_snapshot("session_days", [session_day(d) for d in newest[1:3]])
    assert [d["Day"] for d in model.sessions(7, 5)["days"]] == [d["Day"] for d in newest[1:3]]
