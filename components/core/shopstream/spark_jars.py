"""Spark's pinned offline s3a jars: which ones, their checksums, and where they go.

Facts the installer (`invoke setup` fetches them) and the Spark adapter (it hands them
to the session) both need, so they live here, once.

hadoop-aws + the AWS SDK bundle for s3a://. No Maven repository is reachable from our
machines; these two jars ship inside this PyPI sdist. Elsewhere, set
SHOPSTREAM_SPARK__JARS_SOURCE=packages to resolve hadoop-aws through Maven instead.
"""

from __future__ import annotations

from pathlib import Path

from shopstream.settings import Settings

JARS_SDIST = "sagemaker_pyspark==1.4.5"
JARS = {
    "hadoop-aws-3.3.1.jar": "6be50ad8a8b445d2802381b085b2a3ede5c29d353450a6a21f16b2fefa962b6e",
    "aws-java-sdk-bundle-1.11.901.jar": "b87175b32a16544cc1b37cf40390eb375833e62bed67f8ce6cde4b7ad6429ead",
}


def spark_jar_paths(settings: Settings) -> list[Path]:
    return [settings.spark.jars_dir / name for name in JARS]
