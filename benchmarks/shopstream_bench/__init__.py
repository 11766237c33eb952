"""Reproducible benchmarks on the embedded stack (`invoke bench`)."""
