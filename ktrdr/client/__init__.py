"""The client of a ktrdr platform: :class:`Client` for notebooks and scripts, :class:`AsyncClient`
for async code (the CLI is built on it). Results come back as pandas objects (:mod:`.results`)."""

from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import JetStreamUnavailable, KtrdrError, NoCoordinator, Unanswered
from ktrdr.client.handles import AsyncOp, NotDone, OpFailed
from ktrdr.client.requests import Invalid
from ktrdr.client.sync import Client, Op

__all__ = ["AsyncClient", "AsyncOp", "Client", "Invalid", "JetStreamUnavailable", "KtrdrError", "NoCoordinator",
           "NotDone", "Op", "OpFailed", "Unanswered"]
