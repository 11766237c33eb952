"""Faker-made shop traffic for the ingestion API."""
