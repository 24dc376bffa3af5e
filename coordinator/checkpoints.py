"""Deleting the checkpoints no op record counts on any more (the coordinator's: it alone may purge).

Every checkpoint a worker saves is a new write-once artifact (``ktrdr.runtime.checkpoints``), so the
one a newer checkpoint replaced, and every one of an op that completed, would stay until retention
deleted the op: a training that checkpoints every few epochs would fill the store. An ops listener
purges them as the record changes. What this misses (the coordinator stopped between the change and
the purge, a checkpoint the worker never reported) goes with the op at retention.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from ktrdr.runtime.artifacts import purge_artifact, purge_op_artifacts
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from ktrdr.runtime.tasks import TaskSet
from subjects.models import Operation, OpStatus
from subjects.names import CHECKPOINTS_ARTIFACTS

log = logging.getLogger(__name__)

PURGE_RETRY = RetryPolicy(first_s=0.2, max_s=2.0, budget_s=30.0)


class CheckpointJanitor:
    def __init__(self, *, js: JetStreamContext) -> None:
        self.js = js
        self._tasks = TaskSet(what="checkpoint deletion")

    async def stop(self) -> None:
        await self._tasks.stop()

    async def __aenter__(self) -> CheckpointJanitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def op_changed(self, old: Operation, new: Operation) -> None:
        """An ops listener: an op that just ended needs none of its checkpoints; one that reported a
        new checkpoint needs the one before no more."""
        # Only an op that reported a checkpoint: a purge per completed op would cost every backtest
        # two JetStream requests. A failed or cancelled op keeps its last one, to look into, until
        # retention; so does one written but never reported.
        completed = new.status is OpStatus.COMPLETED and (old is new or old.status is not OpStatus.COMPLETED)
        if completed and (new.checkpoint or old.checkpoint):
            self._tasks.spawn(self._purge(lambda: purge_op_artifacts(self.js, CHECKPOINTS_ARTIFACTS, new.op_id),
                                          f"the checkpoints of {new.op_id}"))
        elif old is not new and old.checkpoint and old.checkpoint != new.checkpoint:
            name = old.checkpoint
            self._tasks.spawn(self._purge(lambda: purge_artifact(self.js, CHECKPOINTS_ARTIFACTS, name),
                                          f"checkpoint {name}"))

    async def _purge(self, purge: Callable[[], Awaitable[None]], what: str) -> None:
        try:
            await PURGE_RETRY.run(purge, retry_on=transient_js_error)
        except Exception as exc:
            log.warning("could not delete %s (retention will): %s: %s", what, type(exc).__name__, exc)
