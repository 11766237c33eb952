"""The analyses behind the notebooks: importable, tested, and independent of Jupyter."""
