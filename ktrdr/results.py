"""The ``results`` Object Store: full operation results (trades, curves, rankings) under the op id.

Workers write there, the coordinator's API and the CLI read; the op record keeps only a summary.
Every role but the coordinator reads and writes it with direct gets and plain publishes
(``ktrdr.runtime.objects``); deleting is the coordinator's (retention).
"""

from __future__ import annotations

import logging

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ktrdr.runtime.objects import ObjectBucket
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from subjects.names import RESULTS_OBJECTS, validate_token

log = logging.getLogger(__name__)

# Storing a result while the bucket's stream elects a leader (4 to 9 s on nats-server): waited out,
# twice over, rather than failing an op whose work is done.
STORE_RETRY = RetryPolicy(first_s=0.2, max_s=2.0, budget_s=30.0)


async def results_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket as the coordinator handles it (nats-py's ObjectStore: consumers and purges)."""
    return await js.object_store(RESULTS_OBJECTS)


def results_objects(js: JetStreamContext) -> ObjectBucket:
    return ObjectBucket(js=js, bucket=RESULTS_OBJECTS)


async def put_result(js: JetStreamContext, op_id: str, data: bytes, *, description: str = "") -> int:
    """Store ``data`` (JSON) as the result of ``op_id``; returns its size in bytes."""
    name = validate_token(op_id, what="operation id")

    async def put() -> int:
        info = await results_objects(js).put(name, data, description=description or None)
        return int(info.size or len(data))

    def retrying(exc: BaseException, pause: float) -> None:
        log.warning("result of %s not stored yet (%s); retrying in %.1f s", op_id, str(exc) or type(exc).__name__,
                    pause)

    return await STORE_RETRY.run(put, retry_on=transient_js_error, on_retry=retrying)


async def get_result(js: JetStreamContext, op_id: str) -> bytes | None:
    """The stored result of ``op_id``, or None when there is none (or no bucket yet)."""
    name = validate_token(op_id, what="operation id")
    try:
        return await results_objects(js).get(name)
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
        return None


async def delete_result(js: JetStreamContext, op_id: str) -> None:
    """Delete the result of ``op_id`` (retention); none stored is not an error."""
    try:
        await (await results_bucket(js)).delete(validate_token(op_id, what="operation id"))
    except NotFoundError:
        pass
