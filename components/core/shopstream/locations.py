"""Where the streaming job's data lives: the lake's s3a URLs, the job's folder, its checkpoints.

One definition for the job that writes there and for those that read it (the analysis,
the audit, the dashboard, the stack, the benchmarks).
"""

from __future__ import annotations

from pathlib import Path

from shopstream.settings import Settings

# the job's two outputs; its one query, and that query's checkpoint, are named after the first
PURCHASES, QUARANTINE = "purchases", "quarantine"


def s3a_url(settings: Settings, path: str) -> str:
    """A path of the lake's bucket as Spark and Hadoop name it."""
    return f"s3a://{settings.s3.bucket}/{path.strip('/')}"


def output_url(settings: Settings) -> str:
    """The raw purchases (the lake: the job's `purchases` output)."""
    return s3a_url(settings, settings.streaming.output_path)


def quarantine_url(settings: Settings) -> str:
    """The records that broke the contract (the job's `quarantine` output)."""
    return s3a_url(settings, settings.streaming.quarantine_path)


def job_folder(settings: Settings) -> Path:
    """Where the job keeps its status, lock, rewinds and (by default) checkpoints: the service folder."""
    return settings.run_dir / "streaming"


def checkpoint_url(settings: Settings, query: str) -> str:
    """Default: <run dir>/streaming/checkpoints/<output_path>/<query>, on local disk, where
    renames are atomic (Spark's checkpoint protocol relies on that; s3a's rename is a copy)."""
    st = settings.streaming
    root = st.checkpoint_location or str(job_folder(settings) / "checkpoints" / st.output_path.strip("/"))
    return f"{root.rstrip('/')}/{query}"
