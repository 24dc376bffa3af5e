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
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], object]] = []
        self.reason: str | None = None

    def cancel(self, reason: str = "cancelled") -> bool:
        """Set the token; returns False when it was already set (first reason wins)."""
        with self._lock:
            if self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()
        return True

    def on_cancel(self, listener: Callable[[], object]) -> None:
        """Call ``listener()`` once, from whichever thread cancels (at once if already cancelled)."""
        with self._lock:
            if not self._event.is_set():
                self._listeners.append(listener)
                return
        listener()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise OperationCancelled(self.reason or "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep up to ``timeout`` seconds, waking early on cancellation."""
        return self._event.wait(timeout)
