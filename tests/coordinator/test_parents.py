"""The parent runner and operation declarations, with types declared here as a contributor would:
a new worker-run type is one declaration and one handler; a parent type is a plan and a reduction,
and the runner does the rest (stages that read earlier results, progress, failure, cancel)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from coordinator.app import Coordinator
from ktrdr.optypes import ON_COORDINATOR, OpType, declare, on, retract
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.parent import Child, ChildState, Decision, Fail, ParentEnv, Ready, Reduced, Stage
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.harness import HandlerEnvironment
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from subjects.params import DummyParams
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status


class EchoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: int = Field(ge=0, le=1_000_000)


class EchoResult(BaseModel):
    doubled: int


ECHO = OpType(name="test_echo", params=EchoParams, result=EchoResult, runs=on(names.CAP_DUMMY_ANY),
              summary="doubles a number (declared by a test)")


async def echo(ctx: JobContext, params: EchoParams) -> EchoResult:
    ctx.progress(percentage=50.0, message="halfway")
    return EchoResult(doubled=2 * params.value)


class ChainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int
    b: int
    fail_first: bool = False
    absorb_fails: bool = False


class ChainPlan:
    """Stage 1 doubles a and b; stage 2 doubles their sum, which only stage 1's results know."""

    unit = "echoes"

    async def prepare(self, params: ChainParams, env: ParentEnv) -> dict[str, Any]:
        return {"planned_by": env.op_id}

    def plan(self, params: ChainParams, prepared: Mapping[str, Any], children: Mapping[str, ChildState]) -> Decision:
        if params.fail_first:
            first = [Child(key="boom", type=DUMMY, params=DummyParams(duration=0, fail="planted failure")),
                     Child(key="slow", type=DUMMY, params=DummyParams(duration=30, steps=30))]
            if "boom" in children and children["boom"].ended:
                return Fail(f"child boom {children['boom'].status.value}: {children['boom'].error}")
            return Stage(name="first", children=first, total=2)
        first = [Child(key="a", type=ECHO, params=EchoParams(value=params.a)),
                 Child(key="b", type=ECHO, params=EchoParams(value=params.b))]
        if any(c.key not in children or not children[c.key].ended for c in first):
            return Stage(name="first", children=first, total=3)
        total = sum(children[k].result["doubled"] for k in ("a", "b"))  # type: ignore[index]
        second = Child(key="sum", type=ECHO, params=EchoParams(value=total))
        if "sum" not in children or not children["sum"].ended:
            return Stage(name="second", children=[second], total=3)
        return Ready()

    async def absorb(self, params: ChainParams, child: ChildState, env: ParentEnv) -> int:
        if params.absorb_fails and child.key == "b":
            raise RuntimeError("planted absorb failure")
        return child.result["doubled"]  # type: ignore[index]

    async def reduce(self, params: ChainParams, prepared: Mapping[str, Any], children: Mapping[str, ChildState],
                     env: ParentEnv) -> Reduced:
        return Reduced(result={"final": children["sum"].result["doubled"],  # type: ignore[index]
                               "planned_by": prepared["planned_by"],
                               "absorbed": {key: await env.absorbed(c.op_id) for key, c in sorted(children.items())}})


CHAIN = OpType(name="test_chain", params=ChainParams, runs=ON_COORDINATOR, parent=ChainPlan(),
               summary="two dependent stages of echoes (declared by a test)")


@pytest.fixture(autouse=True)
def declared() -> Iterator[None]:
    """This module's types exist while its tests run: a worker serving dummy.any elsewhere in the
    session must not be asked for a handler of test_echo."""
    declare(ECHO)
    declare(CHAIN)
    yield
    retract(ECHO)
    retract(CHAIN)


async def test_a_new_worker_type_is_a_declaration_and_a_handler(coordinator: Coordinator,
                                                                 make_worker: MakeWorker) -> None:
    await make_worker("w1", handlers={ECHO: echo})
    op = await coordinator.layer.submit(SubmitRequest(type="test_echo", params={"value": 21}))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, OpStatus.FAILED)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.result == {"doubled": 42} and done.route == "any"


async def test_a_new_types_params_are_checked_before_anything_is_queued(coordinator: Coordinator) -> None:
    from coordinator.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as refused:
        await coordinator.layer.submit(SubmitRequest(type="test_echo", params={"value": -1}))
    assert refused.value.detail is not None and refused.value.detail[0]["field"] == "params.value"
    assert list(coordinator.ops.all()) == []


async def test_a_handler_runs_in_the_harness_without_a_server() -> None:
    env = HandlerEnvironment()
    assert await env.run(echo, EchoParams(value=4), op_type=ECHO) == EchoResult(doubled=8)
    assert env.progress[-1]["percentage"] == 50.0 and env.progress[-1]["op_id"] == env.op_id


async def test_a_later_stage_reads_the_results_of_an_earlier_one(coordinator: Coordinator,
                                                                 make_worker: MakeWorker) -> None:
    await make_worker("w1", handlers={ECHO: echo})
    op = await coordinator.layer.submit(SubmitRequest(type="test_chain", params={"a": 1, "b": 2}))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, OpStatus.FAILED)
    assert done.status is OpStatus.COMPLETED, done.error
    # Each child was absorbed as it completed: the reduction found them all.
    assert done.result == {"final": 12, "planned_by": op.op_id,  # 2 * (2*1 + 2*2)
                           "absorbed": {"a": 2, "b": 4, "sum": 12}}
    children = sorted(c.op_id for c in coordinator.ops.all() if c.parent_id == op.op_id)
    assert children == [f"{op.op_id}-a", f"{op.op_id}-b", f"{op.op_id}-sum"]
    assert done.progress is not None and (done.progress.steps_done, done.progress.percentage) == (3, 100.0)


async def test_a_child_whose_absorbing_failed_is_left_to_the_reduction(
        coordinator: Coordinator, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture) -> None:
    await make_worker("w1", handlers={ECHO: echo})
    op = await coordinator.layer.submit(SubmitRequest(type="test_chain", params={"a": 1, "b": 2,
                                                                                 "absorb_fails": True}))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, OpStatus.FAILED)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.result == {"final": 12, "planned_by": op.op_id, "absorbed": {"a": 2, "b": None, "sum": 12}}
    assert any(f"absorb-{op.op_id}-b failed" in r.getMessage() and "planted absorb failure" in r.getMessage()
               for r in caplog.records)


async def test_a_parent_that_fails_cancels_the_children_still_running(coordinator: Coordinator,
                                                                      make_worker: MakeWorker) -> None:
    await make_worker("w1", slots=2)
    op = await coordinator.layer.submit(SubmitRequest(type="test_chain", params={"a": 1, "b": 2, "fail_first": True}))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert "planted failure" in (failed.error or "")
    slow = await wait_status(coordinator, f"{op.op_id}-slow", OpStatus.CANCELLED)
    assert slow.cancel_reason == f"test_chain {op.op_id} failed: {failed.error}"
    await assert_eventually(lambda: coordinator.ops.get(op.op_id).status is OpStatus.FAILED)  # type: ignore[union-attr]
