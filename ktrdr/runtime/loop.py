"""Running a process's main coroutine, on uvloop where it is installed (it is a dependency on
Linux and macOS: the NATS client and the status API spend much of their time in the event loop)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
