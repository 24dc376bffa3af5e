"""The limits of the wire contract: one way to cut a text, one check of params, bounded cancel reasons."""

from __future__ import annotations

import json

from ktrdr.strategy.loader import MAX_STRATEGY_BYTES
from subjects import limits
from subjects.limits import bounded_text, params_problem
from subjects.models import CancelRequest, decode


def test_a_short_text_is_left_as_it_is() -> None:
    assert bounded_text("enough", 10) == "enough"
    assert bounded_text("x" * 10, 10) == "x" * 10


def test_a_long_text_keeps_its_beginning_and_says_how_long_it_was() -> None:
    cut = bounded_text("é" + "x" * 612_343, 4_000)
    assert len(cut) == 4_000
    assert cut.startswith("éxxx")
    # Bytes, not characters: é is two of them.
    assert cut.endswith("… [truncated, 612345 bytes in all]")


def test_a_limit_shorter_than_the_marker_is_still_kept() -> None:
    assert len(bounded_text("x" * 100, 10)) == 10


def test_params_within_the_limits_pass() -> None:
    assert params_problem({"duration": 1, "fail": "a sentence", "grid": {"fast": [5, 10]}}) is None


def test_an_oversized_string_is_named_by_its_path() -> None:
    field, message = params_problem({"fail": "x" * 600_000})  # type: ignore[misc]
    assert field == "params.fail" and "600000 characters" in message
    field, _ = params_problem({"grid": {"slow": [1, "y" * 70_000]}})  # type: ignore[misc]
    assert field == "params.grid.slow.1"


def test_params_too_large_in_all_are_named_as_params() -> None:
    params = {f"p{i}": "y" * 1_000 for i in range(200)}
    field, message = params_problem(params)  # type: ignore[misc]
    assert field == "params" and f"at most {limits.MAX_PARAMS_BYTES}" in message


def test_an_oversized_key_is_refused_with_a_short_path() -> None:
    field, _ = params_problem({"k" * 70_000: 1})  # type: ignore[misc]
    assert field.startswith("params.k") and len(field) < 100


def test_a_cancel_reason_of_a_megabyte_is_cut_on_decoding() -> None:
    request = decode(CancelRequest, json.dumps({"reason": "r" * 1_000_000}).encode())
    assert len(request.reason) == limits.MAX_REASON_CHARS
    assert request.reason.endswith("[truncated, 1000000 bytes in all]")
    assert request.truncated_from == 1_000_000
    assert CancelRequest(reason="enough").truncated_from is None


def test_the_largest_strategy_text_the_loader_takes_is_admitted_even_escaped() -> None:
    yaml = ('name: "big"\n' * 10_000)[:MAX_STRATEGY_BYTES]
    assert len(yaml.encode()) == MAX_STRATEGY_BYTES <= limits.MAX_PARAM_STRING_CHARS
    assert params_problem({"strategy": yaml, "symbol": "SYN", "timeframe": "1h"}) is None


def test_every_outcome_event_fits_the_payload_with_room_to_spare() -> None:
    # An event carries an inline result and a bounded error; a record keeps both and the params.
    assert limits.MAX_INLINE_RESULT_BYTES + 6 * limits.MAX_ERROR_CHARS < limits.MAX_EVENT_BYTES
    assert limits.MAX_EVENT_BYTES < limits.MAX_RECORD_BYTES < limits.MAX_LIST_PAGE_BYTES < limits.NATS_MAX_PAYLOAD
    assert limits.MAX_PARAMS_BYTES < limits.JOBS_MAX_MSG_BYTES
