"""The analyses on small hand-made data sets whose answers are known; repeat buyers in PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shopstream.adapters.postgres import pg_engine
from shopstream.contracts import PurchaseRecord
from shopstream.contracts.spark import spark_schema
from shopstream_analysis import sales, warehouse
from shopstream_analysis.lake import parse_as_of

AS_OF = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
D = Decimal


def purchase(order, user, lines, minutes_ago=5, payment="CreditCard"):
    total = sum(D(c) * (D(p) - D(d)) for _, c, p, d in lines)
    ts = AS_OF - timedelta(minutes=minutes_ago)
    return {
        "SessionId": f"s-{order}",
        "TimeStamp": ts,
        "UserId": user,
        "TotalPrice": total,
        "OrderId": order,
        "Products": [
            {"ProductId": pid, "ItemCount": c, "ItemPrice": D(p), "ItemDiscount": D(d)} for pid, c, p, d in lines
        ],
        "PaymentType": payment,
        "EventId": f"e-{order}",
        "IngestedAt": ts,
    }


def frame(spark, rows):
    return spark.createDataFrame(
        [PurchaseRecord.model_validate(r).model_dump() | {"PaymentType": r["PaymentType"]} for r in rows],
        spark_schema(PurchaseRecord),
    )


DATA = [
    purchase("o1", "alice", [("p1", 2, "10.00", "1.00"), ("p2", 1, "50.00", "0.00")], payment="PayPal"),
    purchase("o2", "bob", [("p2", 1, "50.00", "10.00")], minutes_ago=30),
    purchase("o3", "alice", [("p1", 1, "10.00", "0.00")], minutes_ago=59),
    purchase("o4", "carol", [("p3", 3, "5.00", "0.00")], minutes_ago=60),  # exactly one hour old: out
    purchase("o5", "dave", [("p4", 2, "100.00", "0.00")], minutes_ago=0),  # at as_of: in
    purchase("o6", "bob", [("p2", 2, "50.00", "0.00")], minutes_ago=120, payment="PayPal"),
    purchase("o7", "erin", [("p3", 2, "5.00", "0.00")], minutes_ago=10),  # same product twice, one order
]


def rows(df):
    return [r.asDict() for r in df.collect()]


def test_best_sellers_by_units_and_revenue_with_discounts_and_ties(spark):
    df = frame(spark, DATA)
    units = rows(sales.best_sellers(df, by="units"))
    # p2: 1+1+2 = 4; p4: 2; p1: 2+1 = 3; p3: 3+2 = 5
    assert [(r["ProductId"], r["Units"]) for r in units] == [("p3", 5), ("p2", 4), ("p1", 3), ("p4", 2)]
    revenue = rows(sales.best_sellers(df, by="revenue"))
    # p2: 50 + 40 + 100 = 190; p4: 200; p1: 2*9 + 10 = 28; p3: 15 + 10 = 25
    assert [(r["ProductId"], r["Revenue"]) for r in revenue] == [
        ("p4", D("200.00")),
        ("p2", D("190.00")),
        ("p1", D("28.00")),
        ("p3", D("25.00")),
    ]
    tie = frame(spark, [purchase("t1", "x", [("b", 1, "1.00", "0")]), purchase("t2", "y", [("a", 1, "1.00", "0")])])
    assert [r["ProductId"] for r in rows(sales.best_sellers(tie))] == ["a", "b"]


CATALOGUE = [("p1", "Kettle", "Kitchen"), ("p2", "Tent", "Outdoors"), ("p3", "Mug", "Kitchen")]  # p4: unknown


def catalogue(spark, rows=CATALOGUE):
    return spark.createDataFrame(rows, warehouse.CATALOGUE_SCHEMA)


def by_category(purchases, known):
    """Revenue by category in plain Python: every line's amount to its product's category."""
    agg = {}
    for p in purchases:
        for x in p["Products"]:
            category = known.get(x["ProductId"], (None, sales.UNKNOWN))[1]
            a = agg.setdefault(category, {"Category": category, "Revenue": D(0), "Orders": set(), "Units": 0})
            a["Revenue"] += x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"])
            a["Orders"].add(p["OrderId"])
            a["Units"] += x["ItemCount"]
    rows = [{**a, "Orders": len(a["Orders"])} for a in agg.values()]
    return sorted(rows, key=lambda r: (-r["Revenue"], r["Category"]))


def test_best_sellers_carry_the_catalogues_name_and_category_and_unknown_otherwise(spark):
    products = sales.with_products(sales.product_sales(frame(spark, DATA)), catalogue(spark))
    got = rows(sales.top_products(products, by="units"))
    known = {p: (n, c) for p, n, c in CATALOGUE}
    assert [(r["ProductId"], r["Name"], r["Category"]) for r in got] == [
        (p, *known.get(p, (p, sales.UNKNOWN))) for p in ("p3", "p2", "p1", "p4")
    ]
    assert [(r["Units"], r["Revenue"]) for r in got] == [
        (r["Units"], r["Revenue"]) for r in rows(sales.best_sellers(frame(spark, DATA)))
    ]


def test_revenue_by_category_sums_lines_counts_orders_and_breaks_ties_by_name(spark):
    known = {p: (n, c) for p, n, c in CATALOGUE}
    got = rows(sales.revenue_by_category(frame(spark, DATA), catalogue(spark)))
    assert got == by_category(DATA, known)
    # Kitchen: p1 (28) + p3 (25) = 53 in o1, o3, o4, o7; Outdoors: p2 190; unknown: p4 200
    assert [(r["Category"], r["Revenue"], r["Orders"]) for r in got] == [
        ("unknown", D("200.00"), 1),
        ("Outdoors", D("190.00"), 3),
        ("Kitchen", D("53.00"), 4),
    ]
    tie = [purchase("t1", "x", [("a", 1, "5.00", "0")]), purchase("t2", "y", [("b", 1, "5.00", "0")])]
    two = catalogue(spark, [("a", "A", "Zebra"), ("b", "B", "Apple")])
    assert [r["Category"] for r in rows(sales.revenue_by_category(frame(spark, tie), two))] == ["Apple", "Zebra"]
    assert rows(sales.revenue_by_category(frame(spark, []), two)) == []


@pytest.mark.services
def test_the_catalogue_is_read_from_postgresql_and_empty_before_the_table_exists(spark, stack, settings):
    from shopstream.adapters.postgres import ensure_database
    from shopstream.contracts.dimensions import PRODUCTS

    cfg = settings.postgres.model_copy(update={"database": "catalogue_read"})
    ensure_database(cfg)
    engine = pg_engine(cfg)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {PRODUCTS.name}"))
        assert warehouse.read_products(spark, engine).count() == 0
        with engine.begin() as conn:
            conn.execute(text(PRODUCTS.ddl))
            conn.execute(
                text(PRODUCTS.upsert),
                [
                    {"product_id": p, "name": n, "category": c, "brand": "B", "list_price": D("1.00")}
                    for p, n, c in CATALOGUE
                ],
            )
        got = sorted(tuple(r) for r in warehouse.read_products(spark, engine).collect())
        assert got == sorted(CATALOGUE)
    finally:
        engine.dispose()


def test_payment_type_shares(spark):
    got = rows(sales.payment_type_shares(frame(spark, DATA)))
    assert [(r["PaymentType"], r["Orders"]) for r in got] == [("CreditCard", 5), ("PayPal", 2)]
    assert got[0]["Share"] == pytest.approx(5 / 7, abs=1e-4)


def test_top_customers_in_the_last_hour_respects_the_boundary(spark):
    got = rows(sales.top_customers_last_hour(frame(spark, DATA), AS_OF))
    # alice: o1 (68) + o3 (10) = 78; dave: 200 at as_of; bob: o2 (40) only; carol's is exactly 1 h old
    assert [(r["UserId"], r["OrderAmount"]) for r in got] == [
        ("dave", D("200.00")),
        ("alice", D("78.00")),
        ("bob", D("40.00")),
        ("erin", D("10.00")),
    ]
    assert rows(sales.top_customers_last_hour(frame(spark, DATA), AS_OF, n=2))[1]["UserId"] == "alice"


def test_repeat_buyers_need_two_orders(spark):
    got = rows(sales.repeat_buyers(frame(spark, DATA)))
    assert [(r["UserId"], r["ProductId"], r["Orders"], r["Units"]) for r in got] == [
        ("alice", "p1", 2, 3),
        ("bob", "p2", 2, 3),
    ]


def test_empty_input_gives_empty_answers(spark):
    empty = frame(spark, [])
    for df in (
        sales.best_sellers(empty),
        sales.payment_type_shares(empty),
        sales.top_customers_last_hour(empty, AS_OF),
        sales.repeat_buyers(empty),
    ):
        assert df.count() == 0


def test_parse_as_of():
    assert parse_as_of("2026-11-22T13:00:00+01:00") == AS_OF
    with pytest.raises(ValueError):
        parse_as_of("2026-11-22T12:00:00")


@pytest.mark.services
def test_repeat_buyers_replace_the_table_in_one_transaction(stack, settings):
    engine = pg_engine(settings.postgres)
    first = [{"UserId": "u1", "ProductId": "p1", "Orders": 2, "Units": 2, "FirstBought": AS_OF, "LastBought": AS_OF}]
    assert warehouse.replace_repeat_buyers(engine, first) == 1
    second = [
        {"UserId": "u2", "ProductId": "p9", "Orders": 3, "Units": 4, "FirstBought": AS_OF, "LastBought": AS_OF},
        {"UserId": "u3", "ProductId": "p9", "Orders": 2, "Units": 2, "FirstBought": AS_OF, "LastBought": AS_OF},
    ]
    # while it is being replaced, readers see the old rows or all the new ones, nothing in between
    many = [{**second[0], "UserId": f"r{i}"} for i in range(2000)] + second
    seen: set[int] = set()
    done = threading.Event()

    def read() -> None:
        with engine.connect() as conn:
            while not done.is_set():
                seen.add(conn.execute(text("select count(*) from repeat_buyers")).scalar_one())
                conn.rollback()

    reader = threading.Thread(target=read)
    reader.start()
    for batch in (many, second):
        warehouse.replace_repeat_buyers(engine, batch)
    done.set()
    reader.join(30)
    assert seen <= {1, len(many), len(second)} and len(seen) >= 1, seen
    with engine.connect() as conn:
        top = conn.execute(text(warehouse.TOP_REPEATED_PRODUCTS_SQL)).mappings().all()
    assert [(r["product_id"], r["repeat_buyers"], r["repeat_orders"]) for r in top] == [("p9", 2, 5)]
    # a failed replace leaves the old rows (the transaction rolls back)
    with pytest.raises(IntegrityError):
        warehouse.replace_repeat_buyers(
            engine,
            [{"UserId": "u4", "ProductId": "p1", "Orders": 1, "Units": 1, "FirstBought": AS_OF, "LastBought": AS_OF}],
        )  # orders > 1 check
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from repeat_buyers")).scalar_one() == 2
    engine.dispose()
