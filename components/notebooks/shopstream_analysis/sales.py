"""Sales insights from the raw purchases (a DataFrame with the PurchaseRecord columns).

Definitions (the notebooks and the README say the same):
- a line's amount is ItemCount x (ItemPrice - ItemDiscount); revenue sums line amounts;
- "last hour" is `as_of - 1 hour < TimeStamp <= as_of` (a purchase exactly one hour old is out);
- a customer's order amount in the window is the sum of their orders' TotalPrice;
- "bought the same product more than once" means in two or more different orders.
Ties are broken by the identifier, so every answer is deterministic.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window


def purchase_lines(purchases: DataFrame) -> DataFrame:
    """One row per product line, with its amount."""
    return (
        purchases.select(
            "EventId", "OrderId", "UserId", "TimeStamp", "PaymentType", F.explode("Products").alias("line")
        )
        .select("EventId", "OrderId", "UserId", "TimeStamp", "PaymentType", "line.*")
        .withColumn("LineAmount", F.col("ItemCount") * (F.col("ItemPrice") - F.col("ItemDiscount")))
    )


def best_sellers(purchases: DataFrame, by: str = "units", n: int = 10) -> DataFrame:
    """Products ranked by units sold or by revenue."""
    order = {"units": "Units", "revenue": "Revenue"}[by]
    return (
        purchase_lines(purchases)
        .groupBy("ProductId")
        .agg(
            F.sum("ItemCount").alias("Units"),
            F.sum("LineAmount").alias("Revenue"),
            F.countDistinct("OrderId").alias("Orders"),
        )
        .orderBy(F.desc(order), F.asc("ProductId"))
        .limit(n)
    )


def payment_type_shares(purchases: DataFrame) -> DataFrame:
    """Orders and revenue per payment type, with each type's share of the orders."""
    total = F.sum("Orders").over(Window.partitionBy())  # a handful of rows: one window is fine
    return (
        purchases.groupBy("PaymentType")
        .agg(F.countDistinct("OrderId").alias("Orders"), F.sum("TotalPrice").alias("Revenue"))
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
            F.sum("TotalPrice").alias("OrderAmount"),
            F.countDistinct("OrderId").alias("Orders"),
            F.max("TotalPrice").alias("LargestOrder"),
        )
        .orderBy(F.desc("OrderAmount"), F.asc("UserId"))
        .limit(n)
    )


def repeat_buyers(purchases: DataFrame) -> DataFrame:
    """Customers who bought the same product in two or more orders, and which products."""
    return (
        purchase_lines(purchases)
        .groupBy("UserId", "ProductId")
        .agg(
            F.countDistinct("OrderId").alias("Orders"),
            F.sum("ItemCount").alias("Units"),
            F.min("TimeStamp").alias("FirstBought"),
            F.max("TimeStamp").alias("LastBought"),
        )
        .where(F.col("Orders") > 1)
        .orderBy(F.desc("Orders"), F.asc("UserId"), F.asc("ProductId"))
    )
