"""Full operation results (trades, curves, rankings): write-once artifacts in the ``results`` store.

A worker writes one with :func:`put_result` and names it in its ``completed`` event; the coordinator
keeps that name in the op record (``Operation.result_object``) and every reader reads that one
(:func:`get_result`), so no other host's artifact, and no later write, can stand in for it
(``ktrdr.runtime.artifacts``). The op record keeps only a summary. Deleting is the coordinator's
(retention), with the op.

Records from before results were write-once name no artifact: theirs are read from the old
``results`` object store under the op id, and deleted from there.
"""

from __future__ import annotations

import logging

from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ktrdr.runtime.artifacts import Artifact, ArtifactMissing, ArtifactStore, purge_op_artifacts
from ktrdr.runtime.objects import ObjectBucket
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from subjects.models import Operation
from subjects.names import RESULTS_ARTIFACTS, RESULTS_OBJECTS, validate_token

log = logging.getLogger(__name__)

# Storing a result while the store's stream elects a leader (4 to 9 s on nats-server): waited out,
# twice over, rather than failing an op whose work is done.
STORE_RETRY = RetryPolicy(first_s=0.2, max_s=2.0, budget_s=30.0)


def results_store(js: JetStreamContext) -> ArtifactStore:
    return ArtifactStore(js=js, store=RESULTS_ARTIFACTS)


async def put_result(js: JetStreamContext, data: bytes, *, host: str, op_id: str, attempt: int,
                     description: str = "") -> Artifact:
    """Store ``data`` (JSON) as a result of ``op_id``'s ``attempt``; its name goes in the outcome."""
    validate_token(op_id, what="operation id")

    async def put() -> Artifact:
        # A retried write is a new artifact: a half-written one is never completed or reused.
        return await results_store(js).put(data, host=host, op_id=op_id, attempt=attempt,
                                           description=description or None)

    def retrying(exc: BaseException, pause: float) -> None:
        log.warning("result of %s not stored yet (%s); retrying in %.1f s", op_id, str(exc) or type(exc).__name__,
                    pause)

    return await STORE_RETRY.run(put, retry_on=transient_js_error, on_retry=retrying)


async def get_result(js: JetStreamContext, op: Operation) -> bytes | None:
    """The result ``op``'s record names, or None when it names none (or it is gone)."""
    if op.result_object:
        try:
            return await results_store(js).get(op.result_object)
        except ArtifactMissing:
            return None
    try:
        return await ObjectBucket(js=js, bucket=RESULTS_OBJECTS).get(validate_token(op.op_id, what="operation id"))
    except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
        return None


async def legacy_results(js: JetStreamContext) -> ObjectStore | None:
    """The object store results were kept in before they were artifacts, if this platform has one."""
    try:
        return await js.object_store(RESULTS_OBJECTS)
    except BucketNotFoundError:
        return None


async def delete_results(js: JetStreamContext, op_id: str, *, legacy: ObjectStore | None = None) -> None:
    """Delete every result written for ``op_id`` (retention; the coordinator's, who alone may purge),
    and its result in ``legacy`` (:func:`legacy_results`) when given."""
    validate_token(op_id, what="operation id")
    await purge_op_artifacts(js, RESULTS_ARTIFACTS, op_id)
    if legacy is not None:
        try:
            await legacy.delete(op_id)
        except NotFoundError:
            pass
