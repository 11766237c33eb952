"""Spark Structured Streaming: `PurchasedItem` from Kafka into raw Parquet on S3, exactly once."""
