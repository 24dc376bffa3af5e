"""Checkpoints of resumable work in the ``checkpoints`` object store, one object per operation id.

Every attempt of an operation writes the same object, so the retry of a lost attempt finds the
last checkpoint its predecessor wrote: the trainer's weights and optimiser state, the IB host's
download plan with the segments already in the shared ``data`` bucket. What a checkpoint holds is
its writer's business; here it is bytes.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ktrdr.runtime.objects import ObjectBucket
from subjects.names import CHECKPOINTS_OBJECTS, validate_token


def checkpoints_objects(js: JetStreamContext) -> ObjectBucket:
    """The bucket the coordinator made (``ensure_topology``), read and written without consumers."""
    return ObjectBucket(js=js, bucket=CHECKPOINTS_OBJECTS)


async def save_checkpoint(js: JetStreamContext, op_id: str, data: bytes) -> None:
    await checkpoints_objects(js).put(validate_token(op_id, what="operation id"), data)


async def load_checkpoint(js: JetStreamContext, op_id: str) -> bytes | None:
    """The operation's last checkpoint, or None when it has none."""
    try:
        return await checkpoints_objects(js).get(validate_token(op_id, what="operation id"))
    except NotFoundError:
        return None


async def delete_checkpoint(js: JetStreamContext, op_id: str) -> None:
    """Marks the checkpoint deleted; its chunks go with the coordinator's next orphan sweep, or at
    once when the coordinator deletes it (:func:`purge_checkpoint`)."""
    await checkpoints_objects(js).delete(validate_token(op_id, what="operation id"))


async def purge_checkpoint(js: JetStreamContext, op_id: str) -> None:
    """Delete the checkpoint with its chunks (the coordinator's: it needs the right to purge)."""
    try:
        await (await js.object_store(CHECKPOINTS_OBJECTS)).delete(validate_token(op_id, what="operation id"))
    except NotFoundError:
        pass
