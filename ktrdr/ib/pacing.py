"""One pacer for every historical request sent through one IB connection.

IB disconnects or blocks a client that breaks its historical-data pacing rules, and a
violation costs far more (a minute or more of blocking) than waiting politely, so every
download asks the shared :class:`Pacer` before each request. The pacer tells the caller how
long it has to wait and why, so progress can say "waiting for pacing: 3.2 s (...)".

Time is injectable (``clock``/``sleep``) so tests can drive it without real waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from ktrdr.cancel import CancelToken

# Waits shorter than this are float noise from window arithmetic, not real waits.
_EPSILON = 1e-6


@dataclass(frozen=True, kw_only=True)
class PacingRules:
    """IB's published limits for historical data requests (windows in seconds)."""

    max_requests: int = 60
    window_s: float = 600.0
    max_per_contract: int = 6
    contract_window_s: float = 2.0
    identical_interval_s: float = 15.0


@dataclass(frozen=True, kw_only=True)
class PacingWait:
    seconds: float
    reason: str

    def describe(self) -> str:
        return f"waiting for pacing: {self.seconds:.1f} s ({self.reason})"


@dataclass(frozen=True, kw_only=True)
class PacingBudget:
    remaining: int  # requests still allowed in the current window
    limit: int
    window_s: float
    resets_in_s: float  # until the oldest counted request leaves the window (0 when none)


class Pacer:
    def __init__(
        self,
        *,
        rules: PacingRules | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_slice_s: float = 1.0,
    ) -> None:
        self.rules = rules or PacingRules()
        self._clock = clock
        self._sleep = sleep
        # Long waits are sliced so a cancelled download stops waiting promptly.
        self._slice = max_sleep_slice_s
        self._sent: deque[float] = deque()
        self._per_contract: dict[str, deque[float]] = {}
        self._identical: dict[Hashable, float] = {}
        self._blocked_until = 0.0
        self._blocked_reason = ""

    def _prune(self, now: float) -> None:
        rules = self.rules
        while self._sent and self._sent[0] <= now - rules.window_s:
            self._sent.popleft()
        for contract, times in list(self._per_contract.items()):
            while times and times[0] <= now - rules.contract_window_s:
                times.popleft()
            if not times:
                del self._per_contract[contract]
        for key, at in list(self._identical.items()):
            if at <= now - rules.identical_interval_s:
                del self._identical[key]

    def check(self, *, contract: str, key: Hashable) -> PacingWait | None:
        """How long a request for ``contract`` with identity ``key`` would have to wait now."""
        now = self._clock()
        self._prune(now)
        rules = self.rules
        waits: list[PacingWait] = []
        if self._blocked_until > now:
            waits.append(PacingWait(seconds=self._blocked_until - now, reason=self._blocked_reason))
        if len(self._sent) >= rules.max_requests:
            waits.append(
                PacingWait(
                    seconds=self._sent[0] + rules.window_s - now,
                    reason=f"{rules.max_requests} requests per {rules.window_s:g} s",
                )
            )
        times = self._per_contract.get(contract)
        if times and len(times) >= rules.max_per_contract:
            waits.append(
                PacingWait(
                    seconds=times[0] + rules.contract_window_s - now,
                    reason=f"{rules.max_per_contract} requests per contract per {rules.contract_window_s:g} s",
                )
            )
        if key in self._identical:
            waits.append(
                PacingWait(
                    seconds=self._identical[key] + rules.identical_interval_s - now,
                    reason=f"identical request within {rules.identical_interval_s:g} s",
                )
            )
        wait = max(waits, key=lambda w: w.seconds, default=None)
        return wait if wait is not None and wait.seconds > _EPSILON else None

    def record(self, *, contract: str, key: Hashable) -> None:
        now = self._clock()
        self._sent.append(now)
        self._per_contract.setdefault(contract, deque()).append(now)
        self._identical[key] = now

    async def acquire(
        self,
        *,
        contract: str,
        key: Hashable,
        on_wait: Callable[[PacingWait], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> float:
        """Wait until the request may be sent, count it, and return the seconds waited.

        ``check`` and ``record`` run without an ``await`` between them, so concurrent
        downloads on one event loop can never both take the last free slot.
        """
        waited = 0.0
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled()
            wait = self.check(contract=contract, key=key)
            if wait is None:
                self.record(contract=contract, key=key)
                return waited
            if on_wait is not None:
                on_wait(wait)
            started = self._clock()
            await self._sleep(min(wait.seconds, self._slice))
            waited += self._clock() - started

    def penalize(self, seconds: float, *, reason: str) -> None:
        """Hold every request for ``seconds`` (after IB reported a pacing violation)."""
        until = self._clock() + seconds
        if until > self._blocked_until:
            self._blocked_until = until
            self._blocked_reason = reason

    def budget(self) -> PacingBudget:
        now = self._clock()
        self._prune(now)
        rules = self.rules
        resets_in = self._sent[0] + rules.window_s - now if self._sent else 0.0
        return PacingBudget(
            remaining=max(0, rules.max_requests - len(self._sent)),
            limit=rules.max_requests,
            window_s=rules.window_s,
            resets_in_s=max(0.0, resets_in),
        )
