"""Sales insights from the raw purchases (a DataFrame with the PurchaseRecord columns).

Definitions (the notebooks and the README say the same):
- a line's amount is ItemCount x (ItemPrice - ItemDiscount); revenue sums line amounts;
- "last hour" is `as_of - 1 hour < TimeStamp <= as_of` (a purchase exactly one hour old is out);
- a customer's order amount in the window is the sum of their orders' TotalPrice;
- "bought the same product more than once" means in two or more different orders;
- a product's Name and Category come from the catalogue (PostgreSQL's `products`, read by
  `warehouse.read_products`); a product the catalogue does not know is named by its ProductId,
  in the category `unknown` (as the dashboard shows it).
Ties are broken by the identifier (a category by its name), so every answer is deterministic.

Each count of distinct orders is an aggregation by (key, OrderId), then by key. Those first keys
are nearly unique (an order seldom repeats a product), so a partial aggregation before the
shuffle would merge almost nothing and only cost a hash map of every row: the rows are shuffled
once, by the outer key, which also clusters them for both aggregations after it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# what the analyses read (read_purchases(...).select(*COLUMNS)): Parquet decodes only these
COLUMNS = ("OrderId", "UserId", "TimeStamp", "PaymentType", "TotalPrice", "Products")
UNKNOWN = "unknown"  # the Category of a product the catalogue does not know


def _cents(money: Column) -> Column:
    """An amount of the contract (decimal(9,2)) as whole cents in a long. Spark adds and
    multiplies longs natively, while a decimal of more than 18 digits (the sum of any
    decimal(9,2), a count times a price) is a Java BigDecimal per value. Exact all the same, and
    with ANSI mode (Spark's default) an overflow fails the query rather than wrapping."""
    return (money * F.lit(Decimal(100))).cast("long")


def _money(cents: Column) -> Column:
    """Cents back to money with 2 decimal places (an exact decimal)."""
    return cents.cast("decimal(20,0)") * F.lit(Decimal("0.01"))


def _line_amount() -> Column:
    return F.col("ItemCount") * (F.col("ItemPrice") - F.col("ItemDiscount"))


def purchase_lines(purchases: DataFrame) -> DataFrame:
    """One row per product line, with its amount."""
    return (
        purchases.select(
            "EventId", "OrderId", "UserId", "TimeStamp", "PaymentType", F.explode("Products").alias("line")
        )
        .select("EventId", "OrderId", "UserId", "TimeStamp", "PaymentType", "line.*")
        .withColumn("LineAmount", _line_amount())
    )


def _lines(purchases: DataFrame) -> DataFrame:
    """The lines with just what the rankings need, the amount in cents."""
    cents = F.col("ItemCount").cast("long") * (_cents(F.col("ItemPrice")) - _cents(F.col("ItemDiscount")))
    return purchases.select("OrderId", "UserId", "TimeStamp", F.inline("Products")).select(
        "OrderId", "UserId", "TimeStamp", "ProductId", "ItemCount", cents.alias("Cents")
    )


def product_sales(purchases: DataFrame) -> DataFrame:
    """Every product's Units, Revenue and Orders (distinct OrderIds): one aggregation that both
    rankings of `best_sellers` can share (cache it, then `top_products` twice)."""
    return (
        _lines(purchases)
        .repartition("ProductId")  # the one shuffle of both aggregations (module docstring)
        .groupBy("ProductId", "OrderId")  # distinct orders, counted below, in the same pass as the sums
        .agg(F.sum("ItemCount").alias("Units"), F.sum("Cents").alias("Cents"))
        .groupBy("ProductId")
        .agg(F.sum("Units").alias("Units"), _money(F.sum("Cents")).alias("Revenue"), F.count("*").alias("Orders"))
    )


def _labelled(frame: DataFrame, catalogue: DataFrame, *labels: str) -> DataFrame:
    """`frame` with the catalogue's `labels` of each ProductId: a product it does not know is named
    by its ProductId, in the category `unknown`. The catalogue is small (a row per product):
    broadcast, not shuffled."""
    fallback = {"Name": F.col("ProductId"), "Category": F.lit(UNKNOWN)}
    joined = frame.join(F.broadcast(catalogue.select("ProductId", *labels)), "ProductId", "left")
    return joined.select(
        *(c for c in frame.columns), *(F.coalesce(F.col(label), fallback[label]).alias(label) for label in labels)
    )


def with_products(products: DataFrame, catalogue: DataFrame) -> DataFrame:
    """`product_sales` with each product's Name and Category from the catalogue."""
    return _labelled(products, catalogue, "Name", "Category").select(
        "ProductId", "Name", "Category", "Units", "Revenue", "Orders"
    )


def revenue_by_category(purchases: DataFrame, catalogue: DataFrame) -> DataFrame:
    """Revenue, Orders (distinct OrderIds with a line of the category) and Units per Category."""
    return (
        _labelled(_lines(purchases), catalogue, "Category")
        .groupBy("Category", "OrderId")  # distinct orders, counted below
        .agg(F.sum("ItemCount").alias("Units"), F.sum("Cents").alias("Cents"))
        .groupBy("Category")
        .agg(_money(F.sum("Cents")).alias("Revenue"), F.count("*").alias("Orders"), F.sum("Units").alias("Units"))
        .orderBy(F.desc("Revenue"), F.asc("Category"))
    )


def top_products(products: DataFrame, by: str = "units", n: int = 10) -> DataFrame:
    """The n first of `product_sales` by units sold or by revenue."""
    order = {"units": "Units", "revenue": "Revenue"}[by]
    return products.orderBy(F.desc(order), F.asc("ProductId")).limit(n)


def best_sellers(purchases: DataFrame, by: str = "units", n: int = 10) -> DataFrame:
    """Products ranked by units sold or by revenue."""
    return top_products(product_sales(purchases), by, n)


def payment_type_shares(purchases: DataFrame) -> DataFrame:
    """Orders and revenue per payment type, with each type's share of the orders."""
    total = F.sum("Orders").over(Window.partitionBy())  # a handful of rows: one window is fine
    return (
        purchases.repartition("OrderId")  # the one shuffle of every order (module docstring)
        .groupBy("PaymentType", "OrderId")
        .agg(F.sum(_cents(F.col("TotalPrice"))).alias("Cents"))
        .groupBy("PaymentType")
        .agg(F.count("*").alias("Orders"), _money(F.sum("Cents")).alias("Revenue"))
        .withColumn("Share", F.round(F.col("Orders") / total, 4))
        .orderBy(F.desc("Orders"), F.asc("PaymentType"))
    )


def top_customers_last_hour(purchases: DataFrame, as_of: datetime, n: int = 10) -> DataFrame:
    """The n customers with the highest order amount in the hour up to `as_of` (inclusive)."""
    start = as_of - timedelta(hours=1)
    return (
        purchases.where((F.col("TimeStamp") > F.lit(start)) & (F.col("TimeStamp") <= F.lit(as_of)))
        .groupBy("UserId")
        .agg(
            _money(F.sum(_cents(F.col("TotalPrice")))).alias("OrderAmount"),
            F.countDistinct("OrderId").alias("Orders"),  # a few rows: the hour's purchases only
            F.max("TotalPrice").alias("LargestOrder"),
        )
        .orderBy(F.desc("OrderAmount"), F.asc("UserId"))
        .limit(n)
    )


def repeat_buyers(purchases: DataFrame) -> DataFrame:
    """Customers who bought the same product in two or more orders, and which products."""
    return (
        _lines(purchases)
        .repartition("UserId", "ProductId")  # the one shuffle of both aggregations (module docstring)
        .groupBy("UserId", "ProductId", "OrderId")  # distinct orders, counted below
        .agg(
            F.sum("ItemCount").alias("Units"),
            F.min("TimeStamp").alias("FirstBought"),
            F.max("TimeStamp").alias("LastBought"),
        )
        .groupBy("UserId", "ProductId")
        .agg(
            F.count("*").alias("Orders"),
            F.sum("Units").alias("Units"),
            F.min("FirstBought").alias("FirstBought"),
            F.max("LastBought").alias("LastBought"),
        )
        .where(F.col("Orders") > 1)
        .orderBy(F.desc("Orders"), F.asc("UserId"), F.asc("ProductId"))
    )
