"""A coroutine handler that holds the event loop is caught: each of its steps is timed, the first stall
of each handler is logged naming it and how long the loop waited, every one is counted, and a watch
that refuses stalls fails the handler. The blame falls on the handler that held the loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.harness import HandlerEnvironment
from ktrdr.runtime.stalls import BlockingHandler, StallWatch
from subjects.params import DummyParams
from subjects.results import DummyResult

NAME = f"{__name__}.crunching"


async def crunching(ctx: JobContext, params: DummyParams) -> DummyResult:
    await asyncio.sleep(0)
    time.sleep(0.3)  # CPU or blocking work between two awaits: the loop waits with it
    await asyncio.sleep(0)
    return DummyResult(steps=params.steps, duration=params.duration)


async def polite(ctx: JobContext, params: DummyParams) -> DummyResult:
    for _ in range(params.steps):
        await asyncio.sleep(0.05)
    return DummyResult(steps=params.steps, duration=params.duration)


def blocking_but_threaded(ctx: JobContext, params: DummyParams) -> DummyResult:
    time.sleep(0.3)  # a plain function runs in a thread: the loop never waits on it
    return DummyResult(steps=params.steps, duration=params.duration)


PARAMS = DummyParams(duration=0, steps=3)


async def test_a_handler_that_holds_the_loop_is_warned_about_once_with_its_name_and_the_wait(
        caplog: pytest.LogCaptureFixture) -> None:
    env = HandlerEnvironment(stalls=StallWatch(threshold_s=0.1))
    with caplog.at_level(logging.WARNING, logger="ktrdr.runtime.stalls"):
        await env.run(crunching, PARAMS, op_type=DUMMY)
        await env.run(crunching, PARAMS, op_type=DUMMY)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith(f"coroutine handler {NAME} held the event loop for 0.3")
    assert "plain `def` handler" in warnings[0]
    assert env.stalls.counts == {NAME: 2} and 0.3 <= env.stalls.longest[NAME] < 1.0


async def test_handlers_that_await_or_run_in_a_thread_never_stall() -> None:
    env = HandlerEnvironment(stalls=StallWatch(threshold_s=0.1, refuse=True))
    assert await env.run(polite, PARAMS, op_type=DUMMY) == DummyResult(steps=3, duration=0)
    assert await env.run(blocking_but_threaded, PARAMS, op_type=DUMMY) == DummyResult(steps=3, duration=0)
    assert env.stalls.total == 0


async def test_the_handler_that_held_the_loop_is_blamed_not_the_one_that_waited_beside_it() -> None:
    env = HandlerEnvironment(stalls=StallWatch(threshold_s=0.1))
    other = HandlerEnvironment(op_id="beside", stalls=env.stalls)
    await asyncio.gather(env.run(crunching, PARAMS, op_type=DUMMY), other.run(polite, PARAMS, op_type=DUMMY))
    assert env.stalls.counts == {NAME: 1}


async def test_a_watch_that_refuses_stalls_fails_the_handler_and_the_record_says_why() -> None:
    env = HandlerEnvironment(stalls=StallWatch(threshold_s=0.1, refuse=True))
    with pytest.raises(BlockingHandler, match=f"{NAME} held the event loop"):
        await env.run(crunching, PARAMS, op_type=DUMMY)
    assert "BlockingHandler" in (env.records.ops["harness-op"].error or "")
