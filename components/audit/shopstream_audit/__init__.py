"""`invoke audit`: every record the ingestion API acknowledged, found (or not) at every stage."""
