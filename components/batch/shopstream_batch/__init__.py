"""Batch layer: UserEvents from Kafka into MongoDB, and exact per-user event counts."""
