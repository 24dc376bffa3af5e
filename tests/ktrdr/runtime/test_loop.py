import asyncio
import gc
from collections.abc import Iterator

import pytest

from ktrdr.runtime.loop import GEN0_THRESHOLD, run, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tuning_freezes_the_start_up_heap_and_collects_the_young_generation_less_often(restored_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)


def test_a_larger_configured_threshold_is_kept(restored_gc: None) -> None:
    gc.set_threshold(GEN0_THRESHOLD * 5, 20, 30)
    tune_gc()
    assert gc.get_threshold() == (GEN0_THRESHOLD * 5, 20, 30)


def test_cyclic_garbage_made_after_tuning_is_still_collected(restored_gc: None) -> None:
    async def make_cycle() -> int:
        a: list[object] = []
        a.append(a)
        del a
        return gc.collect()

    assert run(make_cycle()) >= 1


def test_the_running_loop_is_also_the_threads_current_loop() -> None:
    # ib_insync asks the policy for the loop instead of taking the running one.
    async def both() -> bool:
        return asyncio.get_event_loop_policy().get_event_loop() is asyncio.get_running_loop()

    assert run(both())
