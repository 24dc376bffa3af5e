"""The progress callback that domain code receives.

The worker runtime passes an implementation that throttles and publishes to
``ops.<id>.progress``; tests and scripts may pass any callable with this shape.
"""

from __future__ import annotations

from typing import Any, Protocol


class ProgressFn(Protocol):
    def __call__(
        self,
        *,
        percentage: float | None = None,
        step: str | None = None,
        steps_done: int | None = None,
        steps_total: int | None = None,
        items_done: int | None = None,
        items_total: int | None = None,
        message: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None: ...


def no_progress(**_: Any) -> None:
    """A ProgressFn that discards every update."""
