"""Reading the raw purchases back from the lake, exactly as the streaming job wrote them."""

from __future__ import annotations

from datetime import UTC, datetime

from pyspark.sql import DataFrame, SparkSession

from shopstream.locations import output_url
from shopstream.settings import Settings


class NoDataYet(RuntimeError):
    """The lake has no purchases yet (the streaming job has not committed a batch)."""


def spark_session(settings: Settings, app: str = "shopstream-analysis") -> SparkSession:
    from shopstream.adapters.spark import spark_session as make

    return make(settings, app)


def read_purchases(spark: SparkSession, settings: Settings) -> DataFrame:
    """Every purchase, with `spark.read.parquet` on the dataset's top-level path.

    Spark reads the sink's `_spark_metadata` log there, so only committed files count:
    what a killed job left half-written is never read.
    """
    from pyspark.errors import AnalysisException

    try:
        return spark.read.parquet(output_url(settings))
    except AnalysisException as e:
        if "PATH_NOT_FOUND" in str(e) or "Path does not exist" in str(e) or "UNABLE_TO_INFER_SCHEMA" in str(e):
            raise NoDataYet(
                f"no purchases in {output_url(settings)} yet: start the pipeline with "
                "`invoke up` and wait for the streaming job's first batch"
            ) from None
        raise


def parse_as_of(value: str | None) -> datetime:
    """The analysis' "now": an ISO 8601 time with an offset, or the current time."""
    if not value:
        return datetime.now(UTC)
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"as_of {value!r} needs an offset (for example 2026-11-22T10:00:00Z)")
    return parsed.astimezone(UTC)
