"""The lake's committed Parquet files, read without Spark.

The streaming job's file sink records every batch's files in `<output>/_spark_metadata/`
(`<batch>` files, and every tenth a `<batch>.compact` holding all earlier ones); files
not listed there belong to failed batches and are not data. This is how
`spark.read.parquet` decides too, and like it a path with no such log (a plain batch
write) counts every Parquet file under it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.parquet as pq
from minio import Minio

from shopstream.settings import Settings

from .s3 import object_bytes

COLUMNS = ["EventId", "OrderId", "UserId", "TimeStamp", "IngestedAt", "TotalPrice", "PaymentType", "Products"]
OPTIONAL = ["Enrichment"]  # read where a file has it: files written before enrichment do not


def _log_id(name: str) -> int | None:
    stem = name.rsplit("/", 1)[-1].removesuffix(".compact")
    return int(stem) if stem.isdigit() else None


def _key(uri: str) -> str:
    """s3a://bucket/raw/purchases/date=.../part-0.parquet -> raw/purchases/date=.../part-0.parquet"""
    return unquote(uri.split("://", 1)[1].partition("/")[2] if "://" in uri else uri)


class LakeFiles:
    """Lists the committed files under the streaming job's output path (or another of its
    outputs: `path`, the quarantine's) and reads them."""

    def __init__(self, client: Minio, settings: Settings, path: str | None = None) -> None:
        self.client, self.bucket = client, settings.s3.bucket
        self.prefix = (path or settings.streaming.output_path).strip("/") + "/"
        self._log_seen = -1  # newest metadata log entry already read
        self._committed: set[str] = set()

    def _read_log(self, key: str) -> set[str]:
        """Object keys of the files one metadata log file adds (entries are s3a://bucket/key URIs)."""
        lines = object_bytes(self.client, self.bucket, key).decode().splitlines()
        keys: set[str] = set()
        for line in lines[1:]:  # the first line is the log's version ("v1")
            entry = json.loads(line)
            if entry.get("action", "add") == "add" and not entry.get("isDir"):
                keys.add(_key(entry["path"]))
        return keys

    def committed(self) -> set[str]:
        """Every committed file's key, reading only the log entries not read before."""
        logs: dict[int, str] = {}
        for obj in self.client.list_objects(self.bucket, prefix=self.prefix + "_spark_metadata/"):
            batch = _log_id(obj.object_name)
            if batch is not None and batch > self._log_seen:
                logs.setdefault(batch, obj.object_name)
                if obj.object_name.endswith(".compact"):
                    logs[batch] = obj.object_name
        if not logs and self._log_seen < 0:  # no sink log: a plain batch write, every file counts
            return {
                o.object_name
                for o in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True)
                if o.object_name.endswith(".parquet")
            }
        compacts = [b for b, k in logs.items() if k.endswith(".compact")]
        start = max(compacts) if compacts else min(logs, default=0)
        for batch in sorted(b for b in logs if b >= start):
            self._committed |= self._read_log(logs[batch])
            self._log_seen = batch
        return set(self._committed)

    def read(self, keys: Iterable[str], threads: int = 8, columns: list[str] = COLUMNS) -> pa.Table | None:
        """The files' rows (the purchase columns, or `columns`, and `OPTIONAL` ones where a file has
        them), as one table: null in the rows of a file without one."""

        def one(key: str) -> pa.Table:
            file = pq.ParquetFile(io.BytesIO(object_bytes(self.client, self.bucket, key)))
            names = set(file.schema_arrow.names)
            return file.read(columns=columns + [c for c in OPTIONAL if c in names and c not in columns])

        keys = list(keys)
        if not keys:
            return None
        with ThreadPoolExecutor(threads) as pool:
            tables = list(pool.map(one, keys))
        return pa.concat_tables(tables, promote_options="permissive")
