"""HTTP routes that capabilities add to the status API, beside the core ones in ``coordinator.api``.

Their handlers reach what they need through ``request.app.state`` (see ``coordinator.api.build_app``).
"""

from __future__ import annotations

from starlette.routing import Route

from coordinator import backtests, trainings


def capability_routes() -> list[Route]:
    routes: list[Route] = []
    # One line per capability module, e.g. routes += backtests.routes()
    routes += trainings.routes()
    routes += backtests.routes()
    return routes
