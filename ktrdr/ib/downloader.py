"""Download a symbol's history from IB in request-sized segments, politely and resumably.

The downloader owns the *plan* (which segments, in which order), the *etiquette* (pacing,
back-off after violations) and the *bookkeeping* (a :class:`DownloadState` that records completed
segments and gaps). Persisting bars is the caller's job: ``on_segment`` is called with each
completed segment's bars, so a cancel or a crash loses at most the segment in flight, and a new run
with the same state resumes after the last completed segment. Reconnecting is not its job either:
whoever owns the connection (the IB host's ``Gateway``) owns the reconnect policy, and the
downloader waits for it through the ``reconnect`` hook, then retries the interrupted segment.

Every segment ends in bounded time whatever the gateway does: at most ``drop_retry.attempts - 1``
reconnects, ``timeout_retry.attempts`` unanswered requests, pacing violations until
``pacing_backoff``'s attempts or budget, and ``segment_stall_s`` in all; past any of them the
download fails with :class:`DownloadGaveUp`, naming the segment and the cause, and keeps what
the segments before it stored.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import pandas as pd

from ktrdr.cancel import CancelToken
from ktrdr.ib.client import empty_bars
from ktrdr.ib.errors import ConnectionLost, IbError, NoData, NotConnected, PacingViolation, RequestTimedOut
from ktrdr.ib.limits import Segment, as_utc, limit_for, plan_segments
from ktrdr.ib.pacing import PACING_BACKOFF, Pacer, PacingWait
from ktrdr.progress import ProgressFn, no_progress
from ktrdr.runtime.retry import RetryPolicy

T = TypeVar("T")


class Mode(StrEnum):
    TAIL = "tail"  # from the last stored bar up to end (default: now)
    BACKFILL = "backfill"  # from before the first stored bar back to start
    FULL = "full"  # the whole [start, end) range


@dataclass(frozen=True, kw_only=True)
class StoredRange:
    """First and last bar times the store already holds (the store is not ours to read)."""

    first: datetime
    last: datetime


class BarSource(Protocol):
    async def historical_bars(
        self, symbol: str, timeframe: str, end: datetime, duration: timedelta | str, *,
        timeout_s: float | None = None,
    ) -> pd.DataFrame: ...


class DownloadGaveUp(IbError):
    """A segment could not be fetched within the download's bounds; the message says which and why."""


# A request IB did not answer is asked again at once (the pacer spaces requests), twice at most.
TIMEOUT_RETRY = RetryPolicy(first_s=0.0, max_s=0.0, attempts=3)
# A gateway that drops the connection on every request would otherwise be asked forever (each
# reconnect succeeds): a segment survives three lost connections, the fourth fails the download.
# No pause of its own: waiting for the connection is the reconnect hook's.
DROP_RETRY = RetryPolicy(first_s=0.0, max_s=0.0, attempts=4)
# A segment not done after this long fails the download, whatever held it. Above the longest
# legitimate wait: IB's 10-minute request window plus a request timeout.
SEGMENT_STALL_S = 900.0

# Returns once the connection to IB is back; raises ConnectionLost when it gives up, or
# OperationCancelled when the cancel token (its argument) is set while it waits.
Reconnect = Callable[[CancelToken | None], Awaitable[object]]


@dataclass(kw_only=True)
class DownloadState:
    """Everything needed to resume a download, in this process or (via ``to_dict``) another."""

    symbol: str
    timeframe: str
    mode: Mode
    segments: list[Segment]
    completed: list[Segment] = field(default_factory=list)
    gaps: list[Segment] = field(default_factory=list)  # completed segments IB had no data for
    bars: int = 0
    requests: int = 0

    def pending(self) -> list[Segment]:
        done = set(self.completed)
        return [s for s in self.segments if s not in done]

    @property
    def done(self) -> bool:
        return not self.pending()

    def resume_from(self, earlier: DownloadState) -> int:
        """Take over what an earlier run of the same download completed (a lost attempt's
        checkpoint): its completed segments that this plan also has. Returns how many."""
        if (earlier.symbol, earlier.timeframe, earlier.mode) != (self.symbol, self.timeframe, self.mode):
            return 0
        planned, done = set(self.segments), set(self.completed)
        taken = [s for s in earlier.completed if s in planned and s not in done]
        if not taken:
            return 0
        self.completed.extend(taken)
        self.gaps.extend(g for g in earlier.gaps if g in set(taken) and g not in self.gaps)
        self.bars += earlier.bars
        self.requests += earlier.requests
        return len(taken)

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "mode": str(self.mode),
            "segments": [s.to_dict() for s in self.segments],
            "completed": [s.to_dict() for s in self.completed],
            "gaps": [s.to_dict() for s in self.gaps],
            "bars": self.bars,
            "requests": self.requests,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DownloadState:
        return cls(
            symbol=data["symbol"],
            timeframe=data["timeframe"],
            mode=Mode(data["mode"]),
            segments=[Segment.from_dict(s) for s in data["segments"]],
            completed=[Segment.from_dict(s) for s in data.get("completed", [])],
            gaps=[Segment.from_dict(s) for s in data.get("gaps", [])],
            bars=int(data.get("bars", 0)),
            requests=int(data.get("requests", 0)),
        )


@dataclass(frozen=True, kw_only=True)
class DownloadResult:
    state: DownloadState
    bars: pd.DataFrame  # bars fetched by this run, merged (empty when collect=False)


def plan_download(
    *,
    symbol: str,
    timeframe: str,
    mode: Mode | str,
    start: datetime | None = None,
    end: datetime | None = None,
    stored: StoredRange | None = None,
    earliest: datetime | None = None,
    max_duration: timedelta | None = None,
    now: datetime | None = None,
) -> DownloadState:
    """Turn a request into segments. ``earliest`` (IB's head timestamp) avoids asking for
    years before a listing, which would only burn pacing budget on "no data" answers."""
    mode = Mode(mode)
    limit_for(timeframe)  # reject unknown timeframes before any request
    range_end = as_utc(end) if end is not None else as_utc(now or datetime.now(UTC))
    range_start = as_utc(start) if start is not None else None
    if mode is Mode.TAIL and stored is not None:
        # Re-fetch the last stored bar too: it may have been stored while still forming.
        range_start = as_utc(stored.last)
    elif mode is Mode.BACKFILL and stored is not None:
        range_end = as_utc(stored.first)
    if range_start is None:
        raise ValueError(f"{mode} download of {symbol} needs a start (nothing stored to start from)")
    if earliest is not None:
        range_start = max(range_start, as_utc(earliest))
    segments = (
        plan_segments(
            range_start,
            range_end,
            timeframe,
            max_duration=max_duration,
            # Backfill walks backwards so the stored range stays contiguous if it stops early.
            newest_first=mode is Mode.BACKFILL,
        )
        if range_start < range_end
        else []
    )
    return DownloadState(symbol=symbol.upper(), timeframe=timeframe, mode=mode, segments=segments)


def merge_bars(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate bar frames; where segments overlap, the later frame's bar wins."""
    parts = [f for f in frames if not f.empty]
    if not parts:
        return empty_bars()
    merged = pd.concat(parts)
    merged = merged[~merged.index.duplicated(keep="last")]
    return merged.sort_index()


def trim(frame: pd.DataFrame, segment: Segment) -> pd.DataFrame:
    """Keep bars starting in [segment.start, segment.end); IB rounds durations up."""
    start, end = pd.Timestamp(segment.start), pd.Timestamp(segment.end)
    return frame[(frame.index >= start) & (frame.index < end)]


OnSegment = Callable[[pd.DataFrame], Awaitable[None] | None]


class Downloader:
    def __init__(
        self,
        *,
        source: BarSource,
        pacer: Pacer,
        reconnect: Reconnect | None = None,
        pacing_backoff: RetryPolicy = PACING_BACKOFF,
        timeout_retry: RetryPolicy = TIMEOUT_RETRY,
        drop_retry: RetryPolicy = DROP_RETRY,
        segment_stall_s: float | None = SEGMENT_STALL_S,
    ) -> None:
        self._source = source
        self._pacer = pacer
        # Without it, a lost connection fails the download (ConnectionLost).
        self._reconnect = reconnect
        # The pauses after a violation are the pacer's penalties; this policy's attempts and budget
        # say how long one segment keeps trying through them.
        self._pacing_backoff = pacing_backoff
        self._timeout_retry = timeout_retry
        self._drop_retry = drop_retry
        self._segment_stall_s = segment_stall_s

    async def download(
        self,
        *,
        symbol: str,
        timeframe: str,
        mode: Mode | str,
        start: datetime | None = None,
        end: datetime | None = None,
        stored: StoredRange | None = None,
        earliest: datetime | None = None,
        on_segment: OnSegment | None = None,
        progress: ProgressFn = no_progress,
        cancel: CancelToken | None = None,
        collect: bool = True,
    ) -> DownloadResult:
        state = plan_download(
            symbol=symbol, timeframe=timeframe, mode=mode, start=start, end=end, stored=stored, earliest=earliest
        )
        return await self.run(state, on_segment=on_segment, progress=progress, cancel=cancel, collect=collect)

    async def run(
        self,
        state: DownloadState,
        *,
        on_segment: OnSegment | None = None,
        progress: ProgressFn = no_progress,
        cancel: CancelToken | None = None,
        collect: bool = True,
    ) -> DownloadResult:
        """Fetch every pending segment of ``state`` (mutating it as segments complete).

        Raises OperationCancelled at a segment boundary or pacing wait when ``cancel`` is set;
        segments already passed to ``on_segment`` stay stored and stay in ``state.completed``.
        """
        frames: list[pd.DataFrame] = []
        total = len(state.segments)
        reporter = _Reporter(state=state, progress=progress, pacer=self._pacer)
        reporter.report(f"{state.symbol} {state.timeframe}: {len(state.pending())} of {total} segments to fetch")
        for segment in state.pending():
            if cancel is not None:
                cancel.raise_if_cancelled()
            frame = await self._fetch(state, segment, reporter, cancel)
            if frame is None:
                state.gaps.append(segment)
                note = "no data"
            else:
                frame = trim(frame, segment)
                if on_segment is not None:
                    outcome = on_segment(frame)
                    if inspect.isawaitable(outcome):
                        await outcome
                if collect:
                    frames.append(frame)
                state.bars += len(frame)
                note = f"{len(frame)} bars"
            state.completed.append(segment)
            reporter.report(f"{state.symbol} {state.timeframe} {segment}: {note}", segment=segment)
        return DownloadResult(state=state, bars=merge_bars(frames))

    async def _fetch(
        self, state: DownloadState, segment: Segment, reporter: _Reporter, cancel: CancelToken | None
    ) -> pd.DataFrame | None:
        """One segment's bars, or None when IB has none; retries what is worth retrying, within bounds."""
        bounds = _SegmentBounds(segment=segment, stall_s=self._segment_stall_s,
                                started=asyncio.get_running_loop().time())
        timeout_pauses = self._timeout_retry.delays()
        drop_pauses = self._drop_retry.delays()
        key = (state.symbol, state.timeframe, segment.start, segment.end)
        while True:
            waited = await bounds.within(self._pacer.acquire(
                contract=state.symbol,
                key=key,
                on_wait=lambda wait: reporter.pacing(wait, segment),
                cancel=cancel,
            ))
            if waited > 0:
                # The last message said "waiting": say that the wait is over.
                reporter.report(f"{state.symbol} {state.timeframe}: requesting {segment}", segment=segment)
            try:
                frame = await self._source.historical_bars(
                    state.symbol, state.timeframe, segment.end, segment.span, timeout_s=bounds.left())
            except NotConnected as exc:
                # Nothing went out: neither the record nor IB's limits count it.
                self._pacer.unrecord(contract=state.symbol, key=key)
                await self._lost(exc, bounds, drop_pauses, reporter, cancel)
                continue
            except ConnectionLost as exc:
                state.requests += 1
                await self._lost(exc, bounds, drop_pauses, reporter, cancel)
                continue
            except NoData:
                state.requests += 1
                self._pacer.answered(contract=state.symbol)
                return None
            except PacingViolation as exc:
                state.requests += 1
                self._violation(exc, state, bounds, reporter)
                continue
            except RequestTimedOut as exc:
                state.requests += 1
                bounds.last_problem = str(exc)
                pause = next(timeout_pauses, None)
                if pause is None:
                    raise bounds.give_up(f"IB did not answer {self._timeout_retry.attempts} requests for it "
                                         f"(last: {exc})") from None
                await bounds.within(asyncio.sleep(pause))
                reporter.report(f"IB did not answer for {segment}; retrying", segment=segment)
                continue
            except IbError:
                state.requests += 1
                raise
            state.requests += 1
            self._pacer.answered(contract=state.symbol)
            return frame

    def _violation(self, exc: PacingViolation, state: DownloadState, bounds: _SegmentBounds,
                   reporter: _Reporter) -> None:
        """Report the violation to the shared pacer (it holds back everyone asking for this contract)
        and decide whether the segment may wait for the penalty to end."""
        penalty = self._pacer.violation(contract=state.symbol, code=exc.code, message=exc.message,
                                        source=f"a {state.timeframe} download", connection_wide=exc.connection_wide)
        held = self._pacer.held_for(contract=state.symbol)
        bounds.violations += 1
        now = asyncio.get_running_loop().time()
        if bounds.first_violation is None:
            bounds.first_violation = now
        bounds.last_problem = f"IB pacing violation (code {exc.code})"
        policy = self._pacing_backoff
        described = penalty.describe(now=self._pacer.now())
        if policy.attempts is not None and bounds.violations >= policy.attempts:
            raise bounds.give_up(f"IB reported {bounds.violations} pacing violations in a row "
                                 f"(last: code {exc.code}); {described}") from None
        if policy.budget_s is not None and now + held - bounds.first_violation > policy.budget_s:
            raise bounds.give_up(
                f"IB kept reporting pacing violations ({bounds.violations}, last: code {exc.code}) and the next "
                f"try would come {now + held - bounds.first_violation:.0f} s after the first, past the pacing "
                f"give-up of {policy.budget_s:g} s; {described}") from None
        reporter.report(f"IB pacing violation (code {exc.code}) on {bounds.segment}; backing off {held:.1f} s "
                        f"({described})", segment=bounds.segment)

    async def _lost(self, exc: ConnectionLost, bounds: _SegmentBounds, pauses: Iterator[float],
                    reporter: _Reporter, cancel: CancelToken | None) -> None:
        bounds.drops += 1
        bounds.last_problem = str(exc)
        pause = next(pauses, None)
        if pause is None:
            raise bounds.give_up(f"the connection to IB was lost {bounds.drops} times during it "
                                 f"(at most {bounds.drops - 1} reconnects per segment)") from None
        if self._reconnect is None:
            raise ConnectionLost("connection to IB lost and no reconnect hook")
        reporter.report("connection to IB lost; reconnecting", segment=bounds.segment)
        await bounds.within(self._reconnect(cancel))
        if pause:
            await bounds.within(asyncio.sleep(pause))
        reporter.report("reconnected to IB; resuming from the last completed segment", segment=bounds.segment)


@dataclass(kw_only=True)
class _SegmentBounds:
    """What one segment has met so far, and its deadline (``stall_s`` after it started)."""

    segment: Segment
    stall_s: float | None
    started: float  # event-loop time
    drops: int = 0
    violations: int = 0
    first_violation: float | None = None
    last_problem: str = "none"

    def left(self) -> float | None:
        if self.stall_s is None:
            return None
        left = self.started + self.stall_s - asyncio.get_running_loop().time()
        if left <= 0:
            raise self.give_up(f"no progress for {self.stall_s:g} s (last problem: {self.last_problem})")
        return left

    async def within(self, aw: Awaitable[T]) -> T:
        """``await aw``, failing the segment when its deadline passes first."""
        try:
            left = self.left()
        except DownloadGaveUp:
            if inspect.iscoroutine(aw):
                aw.close()  # never to be awaited
            raise
        if left is None:
            return await aw
        try:
            return await asyncio.wait_for(aw, left)
        except TimeoutError:
            raise self.give_up(f"no progress for {self.stall_s:g} s (last problem: {self.last_problem})") from None

    def give_up(self, cause: str) -> DownloadGaveUp:
        return DownloadGaveUp(f"gave up on segment {self.segment}: {cause}")


@dataclass(kw_only=True)
class _Reporter:
    """Shapes progress updates so every message carries the same percentage and context."""

    state: DownloadState
    progress: ProgressFn
    pacer: Pacer

    def report(self, message: str, *, segment: Segment | None = None, **extra: Any) -> None:
        state = self.state
        total = len(state.segments)
        done = len(state.completed)
        context: dict[str, Any] = {
            "symbol": state.symbol,
            "timeframe": state.timeframe,
            "mode": str(state.mode),
            "gaps": len(state.gaps),
            "requests": state.requests,
            "pacing_budget": self.pacer.budget().remaining,
            "pacing_penalties": len(self.pacer.penalties()),
            **extra,
        }
        if segment is not None:
            context["segment_start"] = segment.start.isoformat()
            context["segment_end"] = segment.end.isoformat()
        self.progress(
            percentage=100.0 * done / total if total else 100.0,
            step="download",
            steps_done=done,
            steps_total=total,
            items_done=state.bars,
            message=message,
            context=context,
        )

    def pacing(self, wait: PacingWait, segment: Segment) -> None:
        self.report(wait.describe(), segment=segment, pacing_wait_s=round(wait.seconds, 3))
