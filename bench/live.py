"""Live-feed benchmark: what connected dashboard pages cost the coordinator (prints figures; not a test).

The coordinator calls ``LiveFeed.op_changed`` for every op change it commits (a submit, a start,
each coalesced progress update, the end). This measures that call, and a flush (the batch's
summaries and JSON, made once, handed to every page), for 0, 1, 10 and 100 connected pages, with a
steady stream of changes spread over ``--ops`` distinct ops, in this process (no server: the feed
is in-memory). The baseline is the same loop with no page connected, measured in the same run.

    python bench/live.py [--changes 200000] [--ops 2000] [--batches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from coordinator.dashboard.live import LiveFeed
from subjects.models import Operation, OpStatus, Progress


def changes(count: int, ops: int) -> list[Operation]:
    return [Operation(op_id=f"dummy-{i % ops:012x}", type="dummy", status=OpStatus.RUNNING,
                      progress=Progress(percentage=(i * 7) % 100, message=f"dummy step {i % 100} of 100"))
            for i in range(count)]


async def measure(pages: int, stream: list[Operation], batches: int) -> tuple[float, float]:
    """(µs per op_changed, ms per flush: the batch encoded once and handed to every page, each page
    taking it as its stream would)."""
    feed = LiveFeed(flush_s=3600.0, max_pending=10**9)  # flushed by hand below, not by its task
    streams = [feed.stream() for _ in range(pages)]
    for s in streams:
        await anext(s)  # hello: the page is now subscribed
    subscribers = list(feed._subscribers)
    per_batch = max(1, len(stream) // batches)
    call_s = flush_s = 0.0
    flushes = 0
    for start in range(0, len(stream), per_batch):
        began = time.perf_counter()
        for op in stream[start:start + per_batch]:
            feed.op_changed(op, op)
        call_s += time.perf_counter() - began
        if not pages:
            continue
        began = time.perf_counter()
        chunks = feed._batch()
        for sub in subscribers:
            sub.push(chunks)
            sub.take()
        flush_s += time.perf_counter() - began
        flushes += 1
    await feed.stop()
    for s in streams:
        await s.aclose()
    return call_s / len(stream) * 1e6, (flush_s / flushes * 1e3) if flushes else 0.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=200_000)
    parser.add_argument("--ops", type=int, default=2_000)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    stream = changes(args.changes, args.ops)
    print(f"{args.changes:,} op changes over {args.ops:,} ops, flushed in {args.batches} batches per page")
    print(f"{'pages':>6} {'µs per change':>14} {'vs no page':>11} {'ms per flush':>13}")
    base = None
    for pages in (0, 1, 10, 100):
        best = min([await measure(pages, stream, args.batches) for _ in range(3)])
        base = base or best[0]
        print(f"{pages:>6} {best[0]:>14.3f} {best[0] / base:>10.1f}x {best[1]:>13.2f}")


if __name__ == "__main__":
    asyncio.run(main())
