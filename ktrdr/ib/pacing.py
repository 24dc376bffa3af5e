"""One pacer for every historical request sent through one IB connection.

IB disconnects or blocks a client that breaks its historical-data pacing rules, and a
violation costs far more (a minute or more of blocking) than waiting politely, so every
download and every ``ib.bars`` request asks the shared :class:`Pacer` before each request. The
pacer tells the caller how long it has to wait and why, so progress can say "waiting for pacing:
3.2 s (...)".

It is also the one model of IB's penalties: whoever meets a pacing violation (100, 162 pacing,
420) reports it with :meth:`Pacer.violation`, and the pacer holds back that contract (every
contract when IB means the whole session) for IB's back-off, doubled per violation in a row.
A penalty belongs to the contract, not to the operation that met it: it ends when its time is up
(or after the next answered request resets the streak), whoever asked.

Time is injectable (``clock``/``sleep``) so tests can drive it without real waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ktrdr.cancel import CancelToken
from ktrdr.runtime.retry import RetryPolicy

# Waits shorter than this are float noise from window arithmetic, not real waits.
_EPSILON = 1e-6

# IB's rule after a pacing error (100, 162, 420): wait a minute, doubled per violation in a row up to
# ten minutes. The pauses are the pacer's penalties; ``attempts`` and ``budget_s`` bound how long one
# download segment keeps retrying through violations (the sixth in a row, or the first whose
# penalty would end more than five minutes after the segment's first violation, fails the download).
PACING_BACKOFF = RetryPolicy(first_s=60.0, max_s=600.0, attempts=6, budget_s=300.0)
# The scope of a penalty that holds back every contract.
ALL_CONTRACTS = "*"
# ib.status lists at most this many penalties (the longest-lasting), so its reply stays small.
MAX_LISTED_PENALTIES = 20


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
    penalty: bool = False  # held by an IB pacing penalty (not by ktrdr's own spacing)

    def describe(self) -> str:
        if self.penalty:
            return f"held by an IB pacing penalty: {self.seconds:.1f} s left ({self.reason})"
        return f"waiting for pacing: {self.seconds:.1f} s ({self.reason})"


@dataclass(frozen=True, kw_only=True)
class Penalty:
    """IB told us to slow down: requests for ``scope`` (a contract, or ``*``) wait until ``until``."""

    scope: str
    code: int | None
    source: str  # which path met it: "download", "ib.bars"
    message: str  # IB's words
    violations: int  # in a row for this scope; the next one doubles the pause
    seconds: float
    until: float  # on the pacer's clock

    def describe(self, now: float) -> str:
        ends = datetime.now(UTC) + timedelta(seconds=max(0.0, self.until - now))
        scope = "all contracts" if self.scope == ALL_CONTRACTS else self.scope
        what = f"IB error {self.code}" if self.code is not None else self.message
        return f"{what} on {scope}, met by {self.source}; penalty ends {ends:%H:%M:%S} UTC"

    def to_dict(self, now: float) -> dict[str, Any]:
        left = max(0.0, self.until - now)
        return {"scope": self.scope, "code": self.code, "source": self.source, "message": self.message[:200],
                "violations": self.violations, "ends_in_s": round(left, 1),
                "ends_at": (datetime.now(UTC) + timedelta(seconds=left)).isoformat(timespec="seconds")}


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
        backoff: RetryPolicy = PACING_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_slice_s: float = 1.0,
    ) -> None:
        self.rules = rules or PacingRules()
        self.backoff = backoff
        self._clock = clock
        self._sleep = sleep
        # Long waits are sliced so a cancelled download stops waiting promptly.
        self._slice = max_sleep_slice_s
        self._sent: deque[float] = deque()
        self._per_contract: dict[str, deque[float]] = {}
        self._identical: dict[Hashable, float] = {}
        self._penalties: dict[str, Penalty] = {}
        # Violations in a row per scope: kept after a penalty ends (the next violation doubles it),
        # reset by an answered request.
        self._streaks: dict[str, int] = {}
        self.violations = 0  # every pacing violation reported, for the status

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
        for scope, penalty in list(self._penalties.items()):
            if penalty.until <= now:
                del self._penalties[scope]

    def check(self, *, contract: str, key: Hashable) -> PacingWait | None:
        """How long a request for ``contract`` with identity ``key`` would have to wait now."""
        now = self._clock()
        self._prune(now)
        rules = self.rules
        waits: list[PacingWait] = []
        for scope in (ALL_CONTRACTS, contract):
            penalty = self._penalties.get(scope)
            if penalty is not None:
                waits.append(PacingWait(seconds=penalty.until - now, reason=penalty.describe(now), penalty=True))
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

    def now(self) -> float:
        return self._clock()

    def unrecord(self, *, contract: str, key: Hashable) -> None:
        """Take back the last :meth:`record` of ``contract``: the request was never sent (no
        connection), so it must not count against IB's limits."""
        times = self._per_contract.get(contract)
        if not times:
            return
        at = times.pop()
        for i in range(len(self._sent) - 1, -1, -1):
            if self._sent[i] == at:
                del self._sent[i]
                break
        if self._identical.get(key) == at:
            del self._identical[key]

    def violation(self, *, contract: str, code: int | None, message: str, source: str,
                  connection_wide: bool = False) -> Penalty:
        """IB reported a pacing violation on a request for ``contract`` (met by ``source``): hold
        back that contract (every contract when ``connection_wide``) for IB's back-off, doubled per
        violation in a row. Returns the penalty in force for that scope."""
        scope = ALL_CONTRACTS if connection_wide else contract
        streak = self._streaks.get(scope, 0) + 1
        self._streaks[scope] = streak
        self.violations += 1
        now = self._clock()
        seconds = self.backoff.delay(streak - 1)
        penalty = Penalty(scope=scope, code=code, source=source, message=message, violations=streak,
                          seconds=seconds, until=now + seconds)
        current = self._penalties.get(scope)
        if current is None or current.until <= penalty.until:
            self._penalties[scope] = penalty
        return self._penalties[scope]

    def held_for(self, *, contract: str) -> float:
        """Seconds until every penalty on ``contract`` (its own and the connection's) has ended."""
        now = self._clock()
        ends = [p.until for s in (ALL_CONTRACTS, contract) if (p := self._penalties.get(s)) is not None]
        return max(0.0, max(ends, default=now) - now)

    def answered(self, *, contract: str) -> None:
        """A request for ``contract`` was answered: IB is content again, the next violation starts
        the back-off over."""
        self._streaks.pop(contract, None)
        self._streaks.pop(ALL_CONTRACTS, None)

    def penalize(self, seconds: float, *, reason: str, scope: str = ALL_CONTRACTS) -> None:
        """Hold ``scope``'s requests for ``seconds`` (a penalty of a set length)."""
        now = self._clock()
        current = self._penalties.get(scope)
        if current is None or current.until < now + seconds:
            self._penalties[scope] = Penalty(scope=scope, code=None, source="ktrdr", message=reason,
                                             violations=1, seconds=seconds, until=now + seconds)

    def penalties(self) -> list[Penalty]:
        """Penalties in force, the longest-lasting first."""
        self._prune(self._clock())
        return sorted(self._penalties.values(), key=lambda p: p.until, reverse=True)

    def describe(self) -> dict[str, Any]:
        """The budget and the penalties in force, bounded in size for ``ib.status`` and the lease."""
        now = self._clock()
        budget = self.budget()
        penalties = self.penalties()
        return {"remaining": budget.remaining, "limit": budget.limit, "window_s": budget.window_s,
                "resets_in_s": round(budget.resets_in_s, 1), "violations": self.violations,
                "penalties": [p.to_dict(now) for p in penalties[:MAX_LISTED_PENALTIES]],
                "penalties_not_listed": max(0, len(penalties) - MAX_LISTED_PENALTIES)}

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
