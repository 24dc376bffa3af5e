"""The ``results`` Object Store: full operation results (trades, curves, rankings) under the op id.

Workers write there, the coordinator's API and the CLI read; the op record keeps only a summary.
"""

from __future__ import annotations

from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from subjects.names import RESULTS_OBJECTS, validate_token


async def results_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket the coordinator made (``ensure_topology``); nobody else may create it."""
    return await js.object_store(RESULTS_OBJECTS)


async def put_result(js: JetStreamContext, op_id: str, data: bytes, *, description: str = "") -> int:
    """Store ``data`` (JSON) as the result of ``op_id``; returns its size in bytes."""
    name = validate_token(op_id, what="operation id")
    bucket = await results_bucket(js)
    info = await bucket.put(name, data, meta=ObjectMeta(name=name, description=description or None))
    return int(info.size or len(data))


async def get_result(js: JetStreamContext, op_id: str) -> bytes | None:
    """The stored result of ``op_id``, or None when there is none (or no bucket yet)."""
    name = validate_token(op_id, what="operation id")
    try:
        bucket = await results_bucket(js)
        return (await bucket.get(name)).data or b""
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
        return None
