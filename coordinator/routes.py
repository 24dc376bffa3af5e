"""HTTP routes that capabilities add to the status API, beside the core ones in ``coordinator.api``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from coordinator import backtests, trainings

if TYPE_CHECKING:
    from coordinator.app import Coordinator


def capability_routes(coordinator: Coordinator) -> list[Route]:
    routes: list[Route] = []
    # One line per capability module, e.g. routes += backtests.routes(coordinator)
    routes += trainings.routes(coordinator)
    routes += backtests.routes(coordinator)
    return routes
