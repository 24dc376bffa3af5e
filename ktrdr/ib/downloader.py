"""Download a symbol's history from IB in request-sized segments, politely and resumably.

The downloader owns the *plan* (which segments, in which order), the *etiquette* (pacing,
back-off after violations) and the *bookkeeping* (a :class:`DownloadState` that records completed
segments and gaps). Persisting bars is the caller's job: ``on_segment`` is called with each
completed segment's bars, so a cancel or a crash loses at most the segment in flight, and a new run
with the same state resumes after the last completed segment. Reconnecting is not its job either:
whoever owns the connection (the IB host's ``Gateway``) owns the reconnect policy, and the
downloader waits for it through the ``reconnect`` hook, then retries the interrupted segment.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import pandas as pd

from ktrdr.cancel import CancelToken
from ktrdr.ib.client import empty_bars
from ktrdr.ib.errors import ConnectionLost, NoData, PacingViolation, RequestTimedOut
from ktrdr.ib.limits import Segment, as_utc, limit_for, plan_segments
from ktrdr.ib.pacing import Pacer, PacingWait
from ktrdr.progress import ProgressFn, no_progress
from ktrdr.runtime.retry import RetryPolicy


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
        self, symbol: str, timeframe: str, end: datetime, duration: timedelta | str
    ) -> pd.DataFrame: ...


# IB's rule after a pacing error (100, 162, 420): wait a minute, doubled per repeat up to ten minutes.
# The pause is a penalty on the shared pacer, so every concurrent download waits it out too; the
# sixth error in a row on one segment fails the download.
PACING_BACKOFF = RetryPolicy(first_s=60.0, max_s=600.0, attempts=6)
# A request IB did not answer is asked again at once (the pacer spaces requests), twice at most.
TIMEOUT_RETRY = RetryPolicy(first_s=0.0, max_s=0.0, attempts=3)

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
    ) -> None:
        self._source = source
        self._pacer = pacer
        # Without it, a lost connection fails the download (ConnectionLost).
        self._reconnect = reconnect
        self._pacing_backoff = pacing_backoff
        self._timeout_retry = timeout_retry

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
        """One segment's bars, or None when IB has none; retries what is worth retrying."""
        pacing_pauses = self._pacing_backoff.delays()
        timeout_pauses = self._timeout_retry.delays()
        key = (state.symbol, state.timeframe, segment.start, segment.end)
        while True:
            await self._pacer.acquire(
                contract=state.symbol,
                key=key,
                on_wait=lambda wait: reporter.pacing(wait, segment),
                cancel=cancel,
            )
            state.requests += 1
            try:
                return await self._source.historical_bars(state.symbol, state.timeframe, segment.end, segment.span)
            except NoData:
                return None
            except PacingViolation as exc:
                backoff = next(pacing_pauses, None)
                if backoff is None:
                    raise
                # Penalising the shared pacer makes every concurrent download back off too.
                self._pacer.penalize(backoff, reason=f"IB reported a pacing violation (code {exc.code})")
                reporter.report(
                    f"IB pacing violation (code {exc.code}) on {segment}; backing off {backoff:.1f} s",
                    segment=segment,
                )
            except RequestTimedOut:
                pause = next(timeout_pauses, None)
                if pause is None:
                    raise
                await asyncio.sleep(pause)
                reporter.report(f"IB did not answer for {segment}; retrying", segment=segment)
            except ConnectionLost:
                await self._recover(reporter, cancel)

    async def _recover(self, reporter: _Reporter, cancel: CancelToken | None) -> None:
        if self._reconnect is None:
            raise ConnectionLost("connection to IB lost and no reconnect hook")
        reporter.report("connection to IB lost; reconnecting")
        await self._reconnect(cancel)
        reporter.report("reconnected to IB; resuming from the last completed segment")


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
