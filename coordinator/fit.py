"""Fitting an op record that grew past what a record may hold, so that it can still be written.

A record that cannot be written would leave its op unfinished for good. What accumulates (info,
progress context, warnings) goes first and the op carries on; if that is not enough, the result and
params go too and the op ends failed, saying what was dropped. The store (``coordinator.store``)
fits a record before writing it; this is the one change to a record that the lifecycle's table
(``coordinator.lifecycle``) does not govern: it is about bytes, not about what happened to the op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from coordinator.lifecycle import attempts_with
from subjects import limits
from subjects.limits import bounded_text, json_size
from subjects.models import Operation, OpStatus

# Warnings a record keeps when it must be cut down to fit (the newest).
FITTED_WARNINGS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Fitted:
    op: Operation
    payload: bytes
    note: str  # why it was fitted
    dropped: list[str]  # what went


def fit(op: Operation, *, size: int, limit: int, at: datetime) -> Fitted:
    """``op`` (``size`` bytes encoded) cut down to ``limit`` bytes; ``at``: the time it fails at,
    should it have to."""
    dropped: list[str] = []
    update: dict[str, Any] = {}
    if op.info:
        dropped.append(f"info ({json_size(op.info)} bytes)")
        update["info"] = {}
    if op.progress is not None and op.progress.context:
        dropped.append("progress context")
        update["progress"] = op.progress.model_copy(update={"context": {}})
    if len(op.warnings) > FITTED_WARNINGS:
        dropped.append(f"{len(op.warnings) - FITTED_WARNINGS} older warnings")
    update["warnings"] = [bounded_text(w, limits.MAX_ERROR_CHARS) for w in op.warnings[-FITTED_WARNINGS:]]
    fitted = op.model_copy(update=update)
    note = f"the record would have been {size} bytes, over the {limit} a record may hold"
    if len(fitted.encode()) <= limit:
        fitted = fitted.model_copy(update={"warnings": [*fitted.warnings, f"{note}; dropped {', '.join(dropped)}"]})
        return Fitted(op=fitted, payload=fitted.encode(), note=note, dropped=dropped)
    # Still too large: what is left that can be large is the result and the params.
    update = {"params": {}}
    if fitted.result is not None:
        dropped.append(f"result ({json_size(fitted.result)} bytes)")
        update["result"] = None
    dropped.append(f"params ({json_size(fitted.params)} bytes)")
    if fitted.status not in (OpStatus.FAILED, OpStatus.CANCELLED):
        ended = fitted.completed_at or at
        update.update(status=OpStatus.FAILED, completed_at=ended,
                      attempts=attempts_with(fitted, ended_at=ended, outcome=OpStatus.FAILED.value))
    update["error"] = bounded_text(f"{note}; dropped {', '.join(dropped)}"
                                   + (f"; error: {fitted.error}" if fitted.error else ""), limits.MAX_ERROR_CHARS)
    update["cancel_reason"] = (bounded_text(fitted.cancel_reason, limits.MAX_REASON_CHARS)
                               if fitted.cancel_reason else None)
    fitted = fitted.model_copy(update=update)
    return Fitted(op=fitted, payload=fitted.encode(), note=note, dropped=dropped)
