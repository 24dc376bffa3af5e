"""Checkpoints of resumable work in the ``checkpoints`` object store, one object per operation id.

Every attempt of an operation writes the same object, so the retry of a lost attempt finds the
last checkpoint its predecessor wrote: the trainer's weights and optimiser state, the IB host's
download plan with the segments already in the shared ``data`` bucket. What a checkpoint holds is
its writer's business; here it is bytes.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from subjects.names import CHECKPOINTS_OBJECTS, validate_token


async def checkpoints_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket the coordinator made (``ensure_topology``); nobody else may create it."""
    return await js.object_store(CHECKPOINTS_OBJECTS)


async def save_checkpoint(js: JetStreamContext, op_id: str, data: bytes) -> None:
    bucket = await checkpoints_bucket(js)
    await bucket.put(validate_token(op_id, what="operation id"), data)


async def load_checkpoint(js: JetStreamContext, op_id: str) -> bytes | None:
    """The operation's last checkpoint, or None when it has none."""
    bucket = await checkpoints_bucket(js)
    try:
        result = await bucket.get(validate_token(op_id, what="operation id"))
    except NotFoundError:
        return None
    return bytes(result.data or b"")


async def delete_checkpoint(js: JetStreamContext, op_id: str) -> None:
    bucket = await checkpoints_bucket(js)
    try:
        await bucket.delete(validate_token(op_id, what="operation id"))
    except NotFoundError:
        pass
