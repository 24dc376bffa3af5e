"""Every size limit of the wire contract, in one place, each with the reason for its size.

NATS refuses a message larger than the server's ``max_payload`` (1 MiB, nats-server's default,
which ktrdr keeps). A record, event or reply that grows past it cannot be written at all, and
whatever waits on it waits forever: an op stays ``running`` because its outcome was never stored,
the coordinator's feed stops acknowledging because one change never commits. So input is bounded
at the door (:func:`params_problem`), every free text is cut with :func:`bounded_text` before it
is sent or stored, and every reply that lists things is paged below the payload.
"""

from __future__ import annotations

from typing import Any, Final

import pydantic_core

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB

# nats-server's default max_payload, which ktrdr keeps: no message, record or reply can be larger.
NATS_MAX_PAYLOAD: Final = 1 * MIB

# --- at the door ------------------------------------------------------------------------------

# One string anywhere in the params. The longest legitimate one is a strategy's YAML text, which
# the strategy loader accepts up to 64 KiB (ktrdr.strategy.loader.MAX_STRATEGY_BYTES); a bound per
# string names the field at fault where the total alone would not.
MAX_PARAM_STRING_CHARS: Final = 64 * KIB
# An operation's params, serialized. They are copied into the op record, every job offer and every
# retry. Room for the longest string once JSON has escaped its newlines and quotes, plus the rest;
# a job stays at half its stream's message limit and a record at a quarter of its own.
MAX_PARAMS_BYTES: Final = 128 * KIB

# How deeply arrays and objects may nest in any JSON that comes from outside (an HTTP body, a NATS
# payload): parsers descend once per level, so 5,000 levels in a few kilobytes would exhaust Python's
# recursion (a 500) long before any size limit. Real payloads nest under 15 (a sweep's grid, a
# walk-forward's config, a strategy given as a mapping with nested all/any/not rules).
MAX_JSON_DEPTH: Final = 64

# --- free texts, cut with bounded_text -----------------------------------------------------------

# The error of a failed op: a message and its context. A traceback belongs in the worker's log; past
# a few thousand characters nobody reads it in a table or a terminal.
MAX_ERROR_CHARS: Final = 4_000
# The type of a handler's error (ktrdr.errors.error_type): a module path and a class name.
MAX_ERROR_TYPE_CHARS: Final = 200
# A cancel reason is a sentence a person or a program gives.
MAX_REASON_CHARS: Final = 1_000
# A progress message or step name: one line under a progress bar.
MAX_PROGRESS_TEXT_CHARS: Final = 1_000
# The free-form context of one progress update, serialized: the record keeps the latest, and it
# is rewritten up to ten times a second per op.
MAX_PROGRESS_CONTEXT_BYTES: Final = 16 * KIB
# The facts of one ``info`` event, serialized: they are merged into the record's ``info`` for good.
MAX_INFO_BYTES: Final = 64 * KIB

# --- what a worker sends and the coordinator keeps ---------------------------------------------

# A result carried inline by a ``completed`` event and kept in the op record: a summary (metrics,
# sizes). Full results (trades, equity curves, rankings) go to the ``results`` object store.
MAX_INLINE_RESULT_BYTES: Final = 256 * KIB
# A whole event a worker sends: an inline result, a bounded error and the envelope.
MAX_EVENT_BYTES: Final = MAX_INLINE_RESULT_BYTES + 64 * KIB
# One op record: params, an inline result, bounded texts, attempts and info. Half the payload, so
# that a page of ``ktrdr.ops.list`` always has room for at least one.
MAX_RECORD_BYTES: Final = 512 * KIB

# --- replies ------------------------------------------------------------------------------------

# One page of ``ktrdr.ops.list`` (and GET /api/v1/operations): the operations' bytes; the rest of
# the payload is left to the envelope and headers.
MAX_LIST_PAGE_BYTES: Final = 768 * KIB
# Operations in one page, however small they are: a client that wants more follows ``next_offset``.
MAX_LIST_PAGE_OPS: Final = 1_000

# --- streams ------------------------------------------------------------------------------------

# A job is its params (at most MAX_PARAMS_BYTES) in a small envelope; twice that leaves room for
# records admitted before these limits, and the server refuses anything larger outright.
JOBS_MAX_MSG_BYTES: Final = 256 * KIB
# Queued jobs: ordinary ones are under 1 KiB, so 1 GiB is about a million waiting jobs (8,000 at
# the largest params). A full queue refuses new offers (discard new) rather than dropping queued work.
JOBS_MAX_BYTES: Final = 1 * GIB
# OPS takes anything a worker can publish: a refused outcome would never be recorded (its worker
# sends it again forever), so the stream does not judge sizes; the coordinator bounds what it keeps.
OPS_MAX_MSG_BYTES: Final = NATS_MAX_PAYLOAD
# Progress (up to 1000 per op) and events of the last 7 days. Full, it refuses new ones (a flood
# cannot push out what the coordinator has not read); the coordinator deletes what it has applied
# once it is half full (coordinator.trim).
OPS_MAX_BYTES: Final = 2 * GIB

# --- buckets and object stores ------------------------------------------------------------------
# Every bucket and object store has a byte limit, and a full one refuses new writes (discard new)
# instead of dropping what is stored: a worker credential that writes as fast as it can (134-240
# MiB/s was measured) fills its own bucket and nothing else. The coordinator's settings override
# each (KTRDR_<BUCKET>_MAX_BYTES); these are the defaults, about 25 GiB with OPS and JOBS.
WORKERS_MAX_BYTES: Final = 64 * MIB  # leases: a few hundred bytes each
CLAIMS_MAX_BYTES: Final = 256 * MIB  # one small claim per attempt, kept 30 days
IB_ACTIVE_MAX_BYTES: Final = 1 * MIB  # one key
MODEL_PINS_MAX_BYTES: Final = 64 * MIB  # one small digest record per model version
OPS_BUCKET_MAX_BYTES: Final = 4 * GIB  # op records (the coordinator is their only writer), 5 revisions each
DATA_MAX_BYTES: Final = 8 * GIB
RESULTS_MAX_BYTES: Final = 4 * GIB
MODELS_MAX_BYTES: Final = 2 * GIB
CHECKPOINTS_MAX_BYTES: Final = 4 * GIB
# One key-value value: a lease, a claim or the IB lock is far below; an op record is MAX_RECORD_BYTES.
KV_MAX_VALUE_BYTES: Final = 64 * KIB


def bounded_text(text: str, limit: int) -> str:
    """``text``, or its beginning with a marker saying how long it was, in at most ``limit`` chars."""
    if len(text) <= limit:
        return text
    marker = f"… [truncated, {len(text.encode('utf-8', 'replace'))} bytes in all]"
    return text[: max(0, limit - len(marker))] + marker[: limit]


def json_size(value: Any) -> int:
    """Bytes of ``value`` as pydantic serializes it, which is how every payload goes on the wire."""
    return len(pydantic_core.to_json(value))


def params_problem(params: dict[str, Any]) -> tuple[str, str] | None:
    """``(field, message)`` when ``params`` are too large to admit, else None.

    The field is the path of the first string over :data:`MAX_PARAM_STRING_CHARS` (``params.fail``,
    ``params.grid.fast.0``), or ``params`` when only the whole is too large.
    """
    def walk(value: Any, path: str) -> tuple[str, str] | None:
        if isinstance(value, str):
            if len(value) > MAX_PARAM_STRING_CHARS:
                return path, f"{len(value)} characters; at most {MAX_PARAM_STRING_CHARS}"
        elif isinstance(value, dict):
            for key, item in value.items():
                # A key is text too, and the path goes into an error message: both stay short.
                name = bounded_text(str(key), 64)
                if len(str(key)) > MAX_PARAM_STRING_CHARS:
                    return f"{path}.{name}", f"a key of {len(str(key))} characters; at most {MAX_PARAM_STRING_CHARS}"
                found = walk(item, f"{path}.{name}")
                if found:
                    return found
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                found = walk(item, f"{path}.{i}")
                if found:
                    return found
        return None

    found = walk(params, "params")
    if found:
        return found
    size = json_size(params)
    if size > MAX_PARAMS_BYTES:
        return "params", f"{size} bytes serialized; at most {MAX_PARAMS_BYTES}"
    return None

# --- market data ----------------------------------------------------------------------------------

# A dataset's arrays, uncompressed: the memory every reader of it (the coordinator's catalog, every
# backtest worker) gives it, checked while its ``.npz`` is inflated, since a small compressed file
# can stand for any size. 256 MiB is 5,592,405 bars at 48 bytes each: 15 years of 24/5 minute bars.
# The catalog also refuses to download an object larger than this: a valid dataset never is.
MAX_DATASET_BYTES: Final = 256 * MIB
# A CSV file ``ktrdr data import`` reads, counted as it is read (a pipe has no size). A bar is 40 to
# 70 characters of text, so a file this size holds about as many bars as a dataset may; a larger
# history is imported in parts (each import merges with what is stored).
MAX_IMPORT_CSV_BYTES: Final = 256 * MIB
