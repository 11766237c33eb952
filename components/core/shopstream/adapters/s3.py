"""S3 client factory (MinIO's client speaks to MinIO, SeaweedFS and AWS alike), and the store's health check."""

from __future__ import annotations

import io

import urllib3
from minio import Minio
from minio.error import S3Error

from shopstream.settings import S3Settings


def s3_client(cfg: S3Settings, **kwargs) -> Minio:
    """kwargs go to Minio (an `http_client` with short timeouts, say)."""
    return Minio(
        cfg.host_port,
        access_key=cfg.access_key,
        secret_key=cfg.secret_key.get_secret_value(),
        secure=cfg.secure,
        region=cfg.region,
        **kwargs,
    )


# An object of the lake bucket that the health check reads back: its answer needs the server's
# data path, not only its metadata (written by the embedded stack's start).
PROBE_KEY = "_shopstream/probe"


def s3_answers(cfg: S3Settings, timeout_s: float = 2.0) -> bool:
    """The store's health check: signed requests with our keys, down to the data.

    HeadBucket on the lake bucket, then a read of the probe object if there is one: SeaweedFS
    answers the first from its filer while, for a few seconds after a restart, its volume
    server has not registered and no object can be read or written. A missing bucket or
    probe is an answer (a first start creates them). A refused key, a server error or no
    answer raises.
    """
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
                               retries=urllib3.Retry(total=0))
    client = s3_client(cfg, http_client=http)
    try:
        if client.bucket_exists(cfg.bucket):
            try:
                client.get_object(cfg.bucket, PROBE_KEY).read()
            except S3Error as e:
                if e.code != "NoSuchKey":
                    raise
        return True
    finally:
        http.clear()


def put_probe(cfg: S3Settings) -> None:
    """Write the object `s3_answers` reads back."""
    body = b"shopstream"
    s3_client(cfg).put_object(cfg.bucket, PROBE_KEY, io.BytesIO(body), len(body))


def ensure_bucket(cfg: S3Settings) -> bool:
    """Create the lake bucket if missing; True when it was created now."""
    client = s3_client(cfg)
    if client.bucket_exists(cfg.bucket):
        return False
    client.make_bucket(cfg.bucket)
    return True
