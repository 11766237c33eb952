"""The ingestion API: validates shop events against the contracts and publishes them to Kafka."""
