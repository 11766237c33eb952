"""Both notebooks end to end on the real stack: purchases posted through the API, streamed
to Parquet on S3 by the job, analysed by the executed notebooks, repeat buyers written to
the real PostgreSQL; every answer checked against the same purchases computed here in
plain Python from what was posted."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import httpx
import pytest
from sqlalchemy import text

from conftest import job_settings, run_until_caught_up
from shopstream.adapters.postgres import pg_engine
from shopstream.contracts import PaymentType
from shopstream_analysis.lake import NoDataYet
from shopstream_analysis.report import run_notebooks
from shopstream_stack import commands

pytestmark = [pytest.mark.services, pytest.mark.usefixtures("stack")]

AS_OF = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CENT = Decimal("0.01")
# log4j's console pattern, as Spark's JVM writes it: "25/12/02 10:00:00 WARN NativeCodeLoader: ..."
SPARK_LOG_LINE = re.compile(r"\d\d/\d\d/\d\d \d\d:\d\d:\d\d (?:WARN|INFO|ERROR) \w+")


def shop(run: str) -> list[dict]:
    """60 orders by 13 customers over 14 products in the 2.5 hours up to AS_OF, so every
    ranking is cut at 10 and many (customer, product) pairs recur; plus one purchase
    exactly one hour before AS_OF (outside the hour) and one exactly at AS_OF (inside)."""
    rnd = random.Random(20261122)
    payments = list(PaymentType)[:4]
    orders = []
    for i in range(62):
        lines = []
        for product in rnd.sample(range(14), rnd.randint(1, 3)):
            price = Decimal(rnd.randint(100, 90_000)) * CENT
            discount = min(price, Decimal(rnd.choice([0, 0, 50, 125, 999])) * CENT)
            lines.append(
                {
                    "ProductId": f"p{product:02d}",
                    "ItemCount": rnd.randint(1, 4),
                    "ItemPrice": price,
                    "ItemDiscount": discount,
                }
            )
        when = {60: AS_OF - timedelta(hours=1), 61: AS_OF}.get(i, AS_OF - timedelta(seconds=rnd.randint(1, 9000)))
        orders.append(
            {
                "SessionId": f"s-{run}-{i}",
                "UserId": f"u{rnd.randint(0, 12):02d}-{run}",
                "OrderId": f"o-{run}-{i:02d}",
                "TimeStamp": when.isoformat(),
                "TotalPrice": sum(x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"]) for x in lines),
                "Products": lines,
                "PaymentType": rnd.choice(payments).value,
            }
        )
    return orders


def as_json(order: dict) -> dict:
    """Money as JSON numbers (what a shop sends)."""
    return json.loads(json.dumps(order, default=float))


# -- the answers, computed independently ---------------------------------------------------
def lines_of(orders):
    for o in orders:
        for x in o["Products"]:
            yield o, x, x["ItemCount"] * (x["ItemPrice"] - x["ItemDiscount"])


# the catalogue the notebook reads from PostgreSQL: p00-p09 known, p10-p13 not (named by their id, `unknown`)
CATALOGUE = {f"p{i:02d}": (f"Product {i}", ["Books", "Garden", "Shoes"][i % 3]) for i in range(10)}
UNKNOWN = ("unknown", "unknown")


def write_catalogue(settings) -> None:
    from shopstream.contracts.dimensions import PRODUCTS

    rows = [
        {"product_id": p, "name": n, "category": c, "brand": "B", "list_price": 1} for p, (n, c) in CATALOGUE.items()
    ]
    with pg_engine(settings.postgres).begin() as conn:
        conn.execute(text(PRODUCTS.ddl))
        conn.execute(text(f"DELETE FROM {PRODUCTS.name} WHERE product_id LIKE 'p__'"))
        conn.execute(text(PRODUCTS.upsert), rows)


def revenue_by_category(orders):
    agg = defaultdict(lambda: {"Revenue": Decimal(0), "Orders": set(), "Units": 0})
    for o, x, amount in lines_of(orders):
        a = agg[CATALOGUE.get(x["ProductId"], UNKNOWN)[1]]
        a["Revenue"] += amount
        a["Orders"].add(o["OrderId"])
        a["Units"] += x["ItemCount"]
    rows = [
        {"Category": c, "Revenue": a["Revenue"], "Orders": len(a["Orders"]), "Units": a["Units"]}
        for c, a in agg.items()
    ]
    return sorted(rows, key=lambda r: (-r["Revenue"], r["Category"]))


def best_sellers(orders, by):
    agg = defaultdict(lambda: {"Units": 0, "Revenue": Decimal(0), "Orders": set()})
    for o, x, amount in lines_of(orders):
        a = agg[x["ProductId"]]
        a["Units"] += x["ItemCount"]
        a["Revenue"] += amount
        a["Orders"].add(o["OrderId"])
    rows = [
        {
            "ProductId": p,
            "Name": CATALOGUE.get(p, (p, "unknown"))[0],
            "Category": CATALOGUE.get(p, UNKNOWN)[1],
            "Units": a["Units"],
            "Revenue": a["Revenue"],
            "Orders": len(a["Orders"]),
        }
        for p, a in agg.items()
    ]
    return sorted(rows, key=lambda r: (-r[by], r["ProductId"]))[:10]


def payment_types(orders):
    agg = defaultdict(lambda: [0, Decimal(0)])
    for o in orders:
        agg[o["PaymentType"]][0] += 1
        agg[o["PaymentType"]][1] += o["TotalPrice"]
    share = lambda n: float((Decimal(n) / len(orders)).quantize(Decimal("0.0001"), ROUND_HALF_UP))  # noqa: E731
    rows = [{"PaymentType": t, "Orders": n, "Revenue": r, "Share": share(n)} for t, (n, r) in agg.items()]
    return sorted(rows, key=lambda r: (-r["Orders"], r["PaymentType"]))


def top_customers(orders):
    agg = defaultdict(list)
    for o in orders:
        if AS_OF - timedelta(hours=1) < datetime.fromisoformat(o["TimeStamp"]) <= AS_OF:
            agg[o["UserId"]].append(o["TotalPrice"])
    rows = [{"UserId": u, "OrderAmount": sum(t), "Orders": len(t), "LargestOrder": max(t)} for u, t in agg.items()]
    return sorted(rows, key=lambda r: (-r["OrderAmount"], r["UserId"]))[:10]


def repeat_buyers(orders):
    agg = defaultdict(lambda: {"Orders": set(), "Units": 0, "Times": []})
    for o, x, _ in lines_of(orders):
        a = agg[(o["UserId"], x["ProductId"])]
        a["Orders"].add(o["OrderId"])
        a["Units"] += x["ItemCount"]
        a["Times"].append(datetime.fromisoformat(o["TimeStamp"]))
    rows = [
        {
            "UserId": u,
            "ProductId": p,
            "Orders": len(a["Orders"]),
            "Units": a["Units"],
            "FirstBought": min(a["Times"]),
            "LastBought": max(a["Times"]),
        }
        for (u, p), a in agg.items()
        if len(a["Orders"]) > 1
    ]
    return sorted(rows, key=lambda r: (-r["Orders"], r["UserId"], r["ProductId"]))


def top_repeated_products(repeats):
    agg = defaultdict(lambda: [0, 0, 0])
    for r in repeats:
        a = agg[r["ProductId"]]
        a[0], a[1], a[2] = a[0] + 1, a[1] + r["Orders"], a[2] + r["Units"]
    rows = [{"product_id": p, "repeat_buyers": b, "repeat_orders": o, "units": u} for p, (b, o, u) in agg.items()]
    return sorted(rows, key=lambda r: (-r["repeat_buyers"], -r["repeat_orders"], r["product_id"]))[:10]


def normalised(rows, money=(), times=()):
    """The notebook's JSON rows with money back as Decimal and times as UTC instants."""

    def utc(v):
        t = datetime.fromisoformat(v)
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)  # Spark's toPandas: naive UTC

    return [{k: Decimal(v) if k in money else utc(v) if k in times else v for k, v in r.items()} for r in rows]


# -- the test -------------------------------------------------------------------------------
def test_both_notebooks_answer_what_the_posted_purchases_say(spark, settings, api_server, tmp_path, capfd):
    st = job_settings(settings, "analysis")
    with pytest.raises(NoDataYet, match=r"no purchases in s3a://.*tests/analysis-.*/purchases yet"):
        run_notebooks(st, tmp_path / "empty")
    assert commands.analyze(st) == 1  # as `invoke analyze` runs it: `python -m shopstream_analysis`
    assert re.search(r"no\s+purchases\s+in\s+s3a://\S*tests/analysis-\S*/purchases\s+yet", capfd.readouterr().out)

    run = uuid.uuid4().hex[:6]
    orders = shop(run)
    for start in range(0, len(orders), 25):
        chunk = [as_json(o) for o in orders[start : start + 25]]
        for _ in range(2):  # a client retry with the same key: the lake must still hold each order once
            r = httpx.post(
                f"{api_server.url}/PurchasedItems",
                json=chunk,
                headers={"Idempotency-Key": f"{run}-{start}"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
    run_until_caught_up(spark, st)
    write_catalogue(st)

    messages = []
    html = run_notebooks(st, tmp_path, as_of=AS_OF.isoformat(), say=messages.append)
    assert [p.name for p in html] == ["01_sales_insights.html", "02_repeat_purchases_sql.html"]
    first = json.loads((tmp_path / "01_sales_insights.json").read_text())
    second = json.loads((tmp_path / "02_repeat_purchases_sql.json").read_text())

    assert normalised(first["best_sellers_by_units"], money={"Revenue"}) == best_sellers(orders, "Units")
    assert normalised(first["best_sellers_by_revenue"], money={"Revenue"}) == best_sellers(orders, "Revenue")
    assert normalised(first["payment_types"], money={"Revenue"}) == payment_types(orders)
    categories = revenue_by_category(orders)
    assert normalised(first["revenue_by_category"], money={"Revenue"}) == categories
    assert {r["Category"] for r in categories} == {"Books", "Garden", "Shoes", "unknown"}
    top = top_customers(orders)
    assert normalised(first["top_customers_last_hour"], money={"OrderAmount", "LargestOrder"}) == top
    assert len(top) == 10  # the cut at 10 was exercised
    repeats = repeat_buyers(orders)
    assert len(repeats) > 10
    assert normalised(first["repeat_buyers"], times={"FirstBought", "LastBought"}) == repeats
    assert second["top_repeated_products"] == top_repeated_products(repeats)

    with pg_engine(settings.postgres).connect() as conn:
        table = conn.execute(
            text("SELECT user_id, product_id, orders, units, first_bought, last_bought FROM repeat_buyers")
        ).all()
    assert sorted(table) == sorted(
        (r["UserId"], r["ProductId"], r["Orders"], r["Units"], r["FirstBought"], r["LastBought"]) for r in repeats
    )

    for page in html:  # Spark's log lines (NativeCodeLoader, WindowExec, ...) are in the kernel log only
        assert not SPARK_LOG_LINE.search(page.read_text()), SPARK_LOG_LINE.search(page.read_text()).group(0)
    charts = [p.read_text().count('class="jp-RenderedImage') for p in html]  # matplotlib figures in outputs
    # best sellers, revenue by category, payment types, top customers, repeats
    assert charts[0] >= 5 and charts[1] >= 1, charts
