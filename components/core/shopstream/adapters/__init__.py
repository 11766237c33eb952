"""Thin, named adapters to external systems: the only place the code base builds their clients.

Each takes the typed settings (and the caller's options: a client_id, timeouts) and returns
a ready client, so a job runs unchanged on the embedded stack, in compose or on a cluster.
Each store's health check is here too, once: `invoke status` and the dashboard both use it.
"""
