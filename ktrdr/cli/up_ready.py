"""When ``ktrdr up`` may say it is up: once the coordinator answers ``GET /health`` with 200.

Starting the processes takes a moment; the coordinator then connects, makes or checks every stream
and bucket, loads the op records and opens the status API. On a loaded machine that took ~18 s, and
``ktrdr up`` used to say it was up (and write the context scripts wait for) before any of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

POLL_S = 0.2
REQUEST_TIMEOUT_S = 2.0


def health_problem(api_url: str) -> str | None:
    """None when the coordinator answers ``GET /health`` with 200; else what happened instead."""
    try:
        answer = httpx.get(f"{api_url}/health", timeout=REQUEST_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if answer.status_code == 200:
        return None
    return f"{answer.status_code} {answer.text.strip()[:300]}"


def wait_until_ready(api_url: str, *, timeout_s: float, between: Callable[[], None],
                     interrupted: Callable[[], bool]) -> str | None:
    """Poll until the coordinator answers; None once it does, else the last thing it said (or why
    not) when ``timeout_s`` ran out or ``interrupted()`` became true. ``between()`` runs after each
    poll (``ktrdr up`` restarts a component that crashed meanwhile)."""
    deadline = time.monotonic() + timeout_s
    problem = "not asked yet"
    while not interrupted():
        found = health_problem(api_url)
        if found is None:
            return None
        problem = found
        if time.monotonic() >= deadline:
            break
        between()
        time.sleep(POLL_S)
    return problem
