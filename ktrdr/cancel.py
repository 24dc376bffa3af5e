"""Cooperative cancellation shared by the worker runtime and every domain engine.

Domain code never sees NATS: it receives a :class:`CancelToken` and calls
``token.raise_if_cancelled()`` (or reads ``token.cancelled``) at its own check points.
The token is a ``threading.Event`` so that it works from the worker thread that runs
blocking work while the event loop sets it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class OperationCancelled(Exception):
    """Raised inside work when its cancellation token has been set."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class CancelToken:
    def __init__(self) -> None:
        # One per operation: the threading.Event only a waiting thread needs is made on its first
        # wait (an Event is a Condition and a lock, a fair share of a zero-duration op's cost).
        self._lock = threading.Lock()
        self._set = False
        self._event: threading.Event | None = None
        self._listeners: list[Callable[[], object]] = []
        self.reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> bool:
        """Set the token; returns False when it was already set (first reason wins)."""
        with self._lock:
            if self._set:
                return False
            self.reason = reason
            self._set = True
            event = self._event
            listeners, self._listeners = self._listeners, []
        if event is not None:
            event.set()
        for listener in listeners:
            listener()
        return True

    def on_cancel(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` once, from whichever thread cancels (at once if already cancelled)."""
        with self._lock:
            if not self._set:
                self._listeners.append(listener)
                return
        listener()

    @property
    def cancelled(self) -> bool:
        return self._set

    def raise_if_cancelled(self) -> None:
        if self._set:
            raise OperationCancelled(self.reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation."""
        with self._lock:
            if self._set:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)
