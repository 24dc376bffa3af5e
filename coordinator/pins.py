"""Registering model versions: the coordinator pins the digest of each bundle a training saved.

A worker saves the bundle (it may write the ``models`` store), so a worker's credential could also
write over one; only the coordinator may write ``model_pins``. When a training op completes, its
result names the version it saved, and that version's digest as stored then is pinned, once
(:func:`ktrdr.models.registry.register_model`); every load checks the bundle against it. Versions
stored before pins existed are pinned as they are found at start, and said so in the log.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext

from ktrdr.models.registry import ModelNotFoundError, list_models, register_model, registered_digest
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from ktrdr.runtime.tasks import TaskSet
from subjects.models import Operation, OpStatus

log = logging.getLogger(__name__)

# JetStream away for a moment (an election): a registration is retried, not lost.
REGISTER_RETRY = RetryPolicy(first_s=0.2, max_s=2.0, budget_s=60.0)


class ModelPins:
    def __init__(self, *, js: JetStreamContext) -> None:
        self.js = js
        self._tasks = TaskSet(what="model registration")

    async def start(self) -> None:
        self._tasks.spawn(self._pin_unregistered())

    async def stop(self) -> None:
        await self._tasks.stop()

    async def __aenter__(self) -> ModelPins:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def op_changed(self, old: Operation, new: Operation) -> None:
        """An ops listener: a training that just completed has a version to register."""
        if new.type != TRAINING.name or new.status is not OpStatus.COMPLETED or old.status is OpStatus.COMPLETED:
            return
        result = new.result or {}
        name, version = result.get("model_name"), result.get("model_version")
        if isinstance(name, str) and isinstance(version, int):
            self._tasks.spawn(self._register(name, version, new.op_id))

    async def _register(self, name: str, version: int, op_id: str | None) -> None:
        try:
            await REGISTER_RETRY.run(lambda: register_model(self.js, name, version, op_id=op_id),
                                     retry_on=transient_js_error)
        except ModelNotFoundError as exc:
            log.error("could not register the model of training %s: %s", op_id, exc)
        except Exception as exc:
            log.error("could not register model %s@%d: %s: %s", name, version, type(exc).__name__, exc)

    async def _pin_unregistered(self) -> None:
        try:
            versions = await list_models(self.js)
        except Exception as exc:
            log.warning("could not list the model registry to register older versions: %s", exc)
            return
        for v in versions:
            if await registered_digest(self.js, v.name, v.version) is None:
                log.warning("registering model %s, stored before versions were registered, as it is now", v.ref)
                await self._register(v.name, v.version, None)
