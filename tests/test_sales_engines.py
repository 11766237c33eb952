"""The dashboard's DuckDB sales figures and the analysis' Spark ones agree on the same lake files.

The two engines compute best sellers (with the catalogue's names), revenue by category and payment
types each in their own SQL. Both read
the same Parquet here, written as the streaming job writes it, so a change of definition
in one of them (a line's amount, distinct orders, a tie-break, a share's rounding) fails.
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shopstream.contracts import PaymentType, PurchaseRecord
from shopstream.contracts.dimensions import ProductInfo
from shopstream.contracts.spark import spark_schema
from shopstream_analysis import sales
from shopstream_analysis.warehouse import CATALOGUE_SCHEMA
from shopstream_dashboard.readmodel import ReadModel
from strategies import price_and_discount

N = 5  # fewer than the products: the cut of the top n is compared too
# p0 to p4 in the catalogue, p5 to p7 not (named by their id, category "unknown"); two share a category
CATALOGUE = [
    ProductInfo(
        ProductId=f"p{i}", Name=f"Lamp {i}", Category=["Home", "Garden"][i % 2], Brand="Acme", ListPrice=Decimal(1)
    )
    for i in range(5)
]

lines = st.builds(
    lambda pid, count, price: {"ProductId": pid, "ItemCount": count, "ItemPrice": price[0], "ItemDiscount": price[1]},
    st.sampled_from([f"p{i}" for i in range(8)]),  # few products: shared, tied and repeated
    st.integers(1, 5),
    price_and_discount(max_price_cents=20_000),
)


@st.composite
def lake(draw) -> list[dict]:
    """Purchases as the streaming job stores them; OrderIds may repeat (a resent order)."""
    rows = []
    for i in range(draw(st.integers(1, 25))):
        products = draw(st.lists(lines, min_size=1, max_size=4))
        total = sum(p["ItemCount"] * (p["ItemPrice"] - p["ItemDiscount"]) for p in products)
        payment = draw(st.sampled_from(list(PaymentType))).value
        rows.append(
            PurchaseRecord.model_validate(
                {
                    "SessionId": f"s{i}",
                    "TimeStamp": "2026-12-01T10:00:00Z",
                    "UserId": f"u{i % 4}",
                    "TotalPrice": total,
                    "OrderId": draw(st.sampled_from([f"o{j}" for j in range(20)])),
                    "Products": products,
                    "PaymentType": payment,
                    "EventId": f"e{i}",
                    "IngestedAt": "2026-12-01T10:00:01Z",
                }
            ).model_dump()
            | {"PaymentType": payment}
        )
    return rows


def money(x: Decimal) -> float:
    return round(float(x), 2)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(purchases=lake())
def test_duckdb_sales_figures_equal_sparks_on_the_same_parquet(spark, tmp_path_factory, purchases):
    path = str(tmp_path_factory.mktemp("lake"))
    spark.createDataFrame(purchases, spark_schema(PurchaseRecord)).write.mode("overwrite").parquet(path)
    df = spark.read.parquet(path)
    model = ReadModel()
    model.add_purchases(pq.read_table(path), [path])
    model.replace_snapshot("products", CATALOGUE)  # as the dashboard's sync copies it from PostgreSQL
    catalogue = spark.createDataFrame([(p.ProductId, p.Name, p.Category) for p in CATALOGUE], CATALOGUE_SCHEMA)
    got = model.sales(N)
    named = sales.with_products(sales.product_sales(df), catalogue)
    for by, key in (("units", "by_units"), ("revenue", "by_revenue")):
        want = [{**r.asDict(), "Revenue": money(r["Revenue"])} for r in sales.top_products(named, by=by, n=N).collect()]
        assert got[key] == want, by
    want_categories = [
        {"Category": r["Category"], "Units": r["Units"], "Revenue": money(r["Revenue"])}
        for r in sales.revenue_by_category(df, catalogue).collect()
    ]
    assert [{k: r[k] for k in ("Category", "Units", "Revenue")} for r in got["by_category"]] == want_categories
    want_payments = [{**r.asDict(), "Revenue": money(r["Revenue"])} for r in sales.payment_type_shares(df).collect()]
    assert got["payment_types"] == want_payments
    lines_total = sum(r["LineAmount"] for r in sales.purchase_lines(df).select("LineAmount").collect())
    assert (got["purchases"], got["orders"], got["revenue"]) == (
        df.count(),
        df.select("OrderId").distinct().count(),
        money(lines_total),
    )
