"""The ``dummy`` operation: simulated work in steps, with progress, cancellation and failure."""

from __future__ import annotations

from ktrdr.runtime.context import JobContext
from subjects.params import DummyParams
from subjects.results import DummyResult


class DummyFailure(RuntimeError):
    pass


async def run_dummy(ctx: JobContext, params: DummyParams) -> DummyResult:
    """Async: its work is sleeping, which needs no thread (blocking handlers get one)."""
    per_step = params.duration / params.steps
    for step in range(1, params.steps + 1):
        # A cancel wakes the sleep at once.
        if per_step > 0:
            await ctx.sleep(per_step)
        ctx.raise_if_cancelled()
        if params.fail and step == params.steps:
            raise DummyFailure(params.fail if isinstance(params.fail, str) else "dummy failure requested")
        if per_step > 0:
            ctx.progress(
                percentage=100.0 * step / params.steps,
                step=f"step {step}/{params.steps}",
                steps_done=step,
                steps_total=params.steps,
                message=f"dummy step {step} of {params.steps}",
            )
    return DummyResult(steps=params.steps, duration=params.duration)
