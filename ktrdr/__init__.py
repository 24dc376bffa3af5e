"""ktrdr: trading-strategy research on a NATS JetStream worker fleet.

``from ktrdr import Client`` is the notebook's way in (:mod:`ktrdr.client`); it is imported on
first use, so the workers and the coordinator, which never use it, do not load it.
"""

from typing import Any

__version__ = "0.1.0"

_CLIENT_NAMES = frozenset({"Client", "AsyncClient", "KtrdrError", "OpFailed", "Invalid"})


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import ktrdr.client

        return getattr(ktrdr.client, name)
    raise AttributeError(f"module 'ktrdr' has no attribute {name!r}")
