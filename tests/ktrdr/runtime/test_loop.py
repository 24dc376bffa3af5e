import asyncio
import gc
import weakref
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


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_cyclic_garbage_made_after_tuning_is_still_collected_by_itself(restored_gc: None) -> None:
    async def cycle_outlives_allocations() -> bool:
        node = _Node()
        gone = weakref.ref(node)
        del node  # a cycle: only the collector can free it
        kept = [[] for _ in range(GEN0_THRESHOLD * 3)]  # enough allocations for a young collection
        del kept
        return gone() is None

    assert run(cycle_outlives_allocations())


def test_the_running_loop_is_also_the_threads_current_loop() -> None:
    # ib_insync asks the policy for the loop instead of taking the running one.
    async def both() -> bool:
        return asyncio.get_event_loop_policy().get_event_loop() is asyncio.get_running_loop()

    assert run(both())
