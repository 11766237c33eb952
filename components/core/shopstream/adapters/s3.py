"""S3 client factory (MinIO's client speaks to MinIO, Ceph RGW and AWS alike), the lake's bucket, the health check."""

from __future__ import annotations

import urllib3
from minio import Minio
from minio.error import S3Error

from shopstream.settings import S3Settings


def s3_client(cfg: S3Settings, timeout_s: float | None = None, **kwargs) -> Minio:
    """`timeout_s`: connect and read timeouts, no retries (for a probe that must not hang);
    other kwargs go to Minio (an `http_client` of the caller's, say)."""
    if timeout_s is not None:
        kwargs.setdefault("http_client", urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s), retries=urllib3.Retry(total=0)))
    return Minio(
        cfg.host_port,
        access_key=cfg.access_key,
        secret_key=cfg.secret_key.get_secret_value(),
        secure=cfg.secure,
        region=cfg.region,
        **kwargs,
    )


def ensure_bucket(cfg: S3Settings) -> bool:
    """Create the lake bucket if missing; True when it was created now."""
    client = s3_client(cfg)
    if client.bucket_exists(cfg.bucket):
        return False
    client.make_bucket(cfg.bucket)
    return True


def s3_health(client: Minio, bucket: str) -> str:
    """The server answers S3 requests (raises when it does not, or answers 5xx): `invoke status`
    and the dashboard. Any S3 answer counts, an error such as AccessDenied included: the server
    serves (before `invoke up` has created the stack's user and bucket, say); the bucket's
    state is in what it returns, which the dashboard shows."""
    try:
        return f"bucket {bucket}" if client.bucket_exists(bucket) else f"serves S3; bucket {bucket} is missing"
    except S3Error as e:
        return f"serves S3; the bucket answers {e.code}"
