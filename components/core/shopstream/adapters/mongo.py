"""MongoDB client factory (pymongo): every client of the code base is built here.

With `MongoSettings.journal` (the default), the client's write concern asks for the journal
(`j: true`): the server answers a write only once it is in its journal, so a write that an
acknowledgement or a Kafka offset commit depends on survives a crash of the server. pymongo
sends that write concern with every write command, `findAndModify` and an aggregate with
`$merge` included (the embedded SecantusDB ignores it for `$merge`'s own writes: see
`shopstream_batch.aggregate.apply`). Without it, the URI's write concern (or the server's
default) applies.
"""

from __future__ import annotations

from pymongo import MongoClient
from pymongo.database import Database

from shopstream.settings import MongoSettings


def mongo_client(cfg: MongoSettings, timeout_ms: int = 5000) -> MongoClient:
    durability = {"journal": True} if cfg.journal else {}
    return MongoClient(cfg.uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True, **durability)


def database(client: MongoClient, cfg: MongoSettings) -> Database:
    return client[cfg.database]
