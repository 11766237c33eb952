"""S3 client factory (MinIO's client speaks to MinIO, SeaweedFS and AWS alike), the lake's bucket, the health check."""

from __future__ import annotations

import io

import urllib3
from minio import Minio
from minio.error import S3Error

from shopstream.settings import S3Settings


def s3_client(cfg: S3Settings, timeout_s: float | None = None, **kwargs) -> Minio:
    """`timeout_s`: connect and read timeouts, no retries (for a probe that must not hang);
    other kwargs go to Minio (an `http_client` of the caller's, say)."""
    if timeout_s is not None:
        kwargs.setdefault(
            "http_client",
            urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=urllib3.Retry(total=0)
            ),
        )
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


def object_bytes(client: Minio, bucket: str, key: str) -> bytes:
    """An object's whole content, its connection given back to the pool."""
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def read_object(client: Minio, bucket: str, key: str) -> bytes | None:
    """An object's bytes; None when it is gone (a lake file compacted away since its listing)."""
    try:
        return object_bytes(client, bucket, key)
    except S3Error as e:
        if e.code in ("NoSuchKey", "NotFound"):
            return None
        raise


def s3_health(client: Minio, bucket: str) -> str:
    """The store's one health check, used by `invoke status`, the stack's start and the dashboard.

    Signed requests with our keys, down to the data: HeadBucket on the lake bucket, then a read
    of the probe object if there is one. SeaweedFS answers the first from its filer while, for
    a few seconds after a restart, its volume server has not registered and no object can be
    read. A missing bucket or probe is an answer (a first `invoke up` creates them). A refused
    key, a server error or no answer raises.
    """
    if not client.bucket_exists(bucket):
        return f"serves S3; bucket {bucket} is missing"
    try:
        client.get_object(bucket, PROBE_KEY).read()
    except S3Error as e:
        if e.code != "NoSuchKey":
            raise
    return f"bucket {bucket}"


def put_probe(cfg: S3Settings) -> None:
    """Write the object `s3_health` reads back."""
    body = b"shopstream"
    s3_client(cfg).put_object(cfg.bucket, PROBE_KEY, io.BytesIO(body), len(body))


def ensure_bucket(cfg: S3Settings) -> bool:
    """Create the lake bucket if missing; True when it was created now."""
    client = s3_client(cfg)
    if client.bucket_exists(cfg.bucket):
        return False
    client.make_bucket(cfg.bucket)
    return True
