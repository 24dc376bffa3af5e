"""The claims the coordinator has seen stored, so that checking who owns an attempt costs no read.

The report that makes an attempt someone's (``started``, or an outcome before it) counts only from
the worker its write-once claim names (``coordinator.fold``). Reading the claim for each report was
a KV request per operation (the dispatch benchmark lost a fifth of its throughput). Instead an
ordered consumer (the coordinator's own; no other role may make one) delivers each claim as the
``claims`` stream stores it: only what was stored, in the stream's order, never a publish the
bucket refused. A claim made before the coordinator started, or not delivered yet when its report
arrives, is read from the bucket as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from subjects import names

log = logging.getLogger(__name__)

# Claims remembered: far more than the attempts starting at once; older ones are read if asked for.
CAPACITY = 100_000


class ClaimWatch:
    def __init__(self, *, js: JetStreamContext, capacity: int = CAPACITY) -> None:
        self.js = js
        self.capacity = capacity
        self._holders: OrderedDict[str, str] = OrderedDict()
        self._waiting: dict[str, asyncio.Event] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.js.subscribe(names.kv_all(names.CLAIMS_BUCKET), cb=self._on_msg, ordered_consumer=True,
                                            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def holder(self, op_id: str, attempt: int) -> str | None:
        """The worker whose claim of the attempt was stored, if it has been seen."""
        return self._holders.get(names.claim_key(op_id, attempt))

    async def wait(self, op_id: str, attempt: int, timeout: float) -> str | None:
        """:meth:`holder`, waiting up to ``timeout`` for the claim to be delivered: a worker reports
        right after its claim is stored, often before this consumer has delivered it."""
        key = names.claim_key(op_id, attempt)
        if key not in self._holders and self._sub is not None:
            event = self._waiting.setdefault(key, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout)
            if not event.is_set() and self._waiting.get(key) is event:
                del self._waiting[key]
        return self._holders.get(key)

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject.rpartition(".")[2]
        if key in self._holders or not msg.data:
            return  # the bucket keeps a claim's first write only
        # Only the claimant's id is needed, once per operation: plain JSON, not the model's validation.
        try:
            worker_id = json.loads(msg.data).get("worker_id")
        except (ValueError, AttributeError):
            return
        if not isinstance(worker_id, str):
            return
        self._holders[key] = worker_id
        while len(self._holders) > self.capacity:
            self._holders.popitem(last=False)
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            waiting.set()
