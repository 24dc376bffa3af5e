"""Checkpoints of resumable work: write-once artifacts in the ``checkpoints`` store.

Each save is a new artifact; the worker reports its name (an ``info`` event), the coordinator keeps
it in the op record (``Operation.checkpoint``), purges the one it replaces and hands it to the next
attempt in the job offer (``JobMessage.checkpoint``): the retry of a lost attempt resumes from the
last checkpoint its predecessor reported, and from no other host's. What a checkpoint holds is its
writer's business (the trainer's weights and optimiser state, the IB host's download plan); here it
is bytes. When the op ends, the coordinator purges every checkpoint written for it.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from ktrdr.runtime.artifacts import Artifact, ArtifactMissing, ArtifactStore
from subjects.names import CHECKPOINTS_ARTIFACTS


def checkpoints_store(js: JetStreamContext) -> ArtifactStore:
    return ArtifactStore(js=js, store=CHECKPOINTS_ARTIFACTS)


async def save_checkpoint(js: JetStreamContext, data: bytes, *, host: str, op_id: str, attempt: int) -> Artifact:
    return await checkpoints_store(js).put(data, host=host, op_id=op_id, attempt=attempt)


async def load_checkpoint(js: JetStreamContext, name: str) -> bytes | None:
    """The checkpoint ``name``, or None when it is gone."""
    try:
        return await checkpoints_store(js).get(name)
    except ArtifactMissing:
        return None
