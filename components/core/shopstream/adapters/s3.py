"""S3 client factory (MinIO's client speaks to MinIO, Ceph RGW and AWS alike)."""

from __future__ import annotations

from minio import Minio

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


def ensure_bucket(cfg: S3Settings) -> bool:
    """Create the lake bucket if missing; True when it was created now."""
    client = s3_client(cfg)
    if client.bucket_exists(cfg.bucket):
        return False
    client.make_bucket(cfg.bucket)
    return True
