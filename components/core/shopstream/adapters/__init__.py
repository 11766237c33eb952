"""Thin, named adapters to external systems.

Each takes the typed settings and returns a ready client, so a job runs
unchanged on the embedded stack, in compose or on a cluster.
"""
