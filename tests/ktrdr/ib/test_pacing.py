from __future__ import annotations

import asyncio

import pytest

from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.ib.pacing import Pacer, PacingRules, PacingWait


class FakeTime:
    """A clock that only moves when somebody sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def make_pacer(t: FakeTime, **rules: float) -> Pacer:
    return Pacer(rules=PacingRules(**rules), clock=t.clock, sleep=t.sleep, max_sleep_slice_s=1000)  # type: ignore[arg-type]


async def test_burst_on_one_contract_is_spread_to_six_per_two_seconds() -> None:
    t = FakeTime()
    pacer = make_pacer(t)
    sent: list[float] = []
    for i in range(13):
        await pacer.acquire(contract="AAPL", key=("AAPL", i))
        sent.append(t.now - 1000.0)
    assert sent == [0.0] * 6 + [2.0] * 6 + [4.0]


async def test_other_contracts_are_not_held_back_by_one_busy_contract() -> None:
    t = FakeTime()
    pacer = make_pacer(t)
    for i in range(6):
        await pacer.acquire(contract="AAPL", key=("AAPL", i))
    assert pacer.check(contract="AAPL", key="x") is not None
    assert pacer.check(contract="MSFT", key="y") is None


async def test_sixty_per_window_and_budget() -> None:
    t = FakeTime()
    pacer = make_pacer(t, max_requests=5, window_s=10.0, max_per_contract=100)
    assert pacer.budget().remaining == 5
    for i in range(5):
        await pacer.acquire(contract=f"S{i}", key=i)
        t.now += 1.0
    budget = pacer.budget()
    assert (budget.remaining, budget.limit) == (0, 5)
    assert budget.resets_in_s == pytest.approx(5.0)
    waits: list[PacingWait] = []
    waited = await pacer.acquire(contract="S9", key=9, on_wait=waits.append)
    assert waited == pytest.approx(5.0)
    assert "5 requests per 10 s" in waits[0].reason
    assert waits[0].describe() == "waiting for pacing: 5.0 s (5 requests per 10 s)"


async def test_identical_requests_wait_fifteen_seconds() -> None:
    t = FakeTime()
    pacer = make_pacer(t)
    await pacer.acquire(contract="AAPL", key="same")
    t.now += 3.0
    wait = pacer.check(contract="AAPL", key="same")
    assert wait is not None and wait.seconds == pytest.approx(12.0)
    assert "identical" in wait.reason
    assert await pacer.acquire(contract="AAPL", key="same") == pytest.approx(12.0)


async def test_penalty_holds_everyone() -> None:
    t = FakeTime()
    pacer = make_pacer(t)
    pacer.penalize(60.0, reason="IB reported a pacing violation")
    wait = pacer.check(contract="ANY", key=1)
    assert wait is not None and wait.seconds == pytest.approx(60.0) and "violation" in wait.reason


async def test_concurrent_downloads_never_exceed_the_contract_limit() -> None:
    t = FakeTime()
    pacer = make_pacer(t, max_per_contract=2, contract_window_s=1.0)
    sent: list[float] = []

    async def worker(n: int) -> None:
        for i in range(4):
            await pacer.acquire(contract="AAPL", key=(n, i))
            sent.append(t.now)

    await asyncio.gather(worker(1), worker(2))
    sent.sort()
    assert len(sent) == 8
    for a, b in zip(sent, sent[2:], strict=False):
        assert b - a >= 1.0 - 1e-9


async def test_cancel_interrupts_a_pacing_wait() -> None:
    t = FakeTime()
    pacer = make_pacer(t)
    token = CancelToken()
    await pacer.acquire(contract="AAPL", key="k")

    def on_wait(_: PacingWait) -> None:
        token.cancel("user")

    with pytest.raises(OperationCancelled):
        await pacer.acquire(contract="AAPL", key="k", on_wait=on_wait, cancel=token)
