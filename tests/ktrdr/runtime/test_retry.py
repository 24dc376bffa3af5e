"""The platform's one retry policy: its pauses, its budget, and what counts as an election's error."""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import APIError, KeyWrongLastSequenceError, NoStreamResponseError, ServiceUnavailableError

from ktrdr.natsd import NatsServer
from ktrdr.runtime.retry import RetryPolicy, any_error, transient_js_error
from subjects import roles
from tests.conftest import connect_as


def test_pauses_grow_by_the_multiplier_up_to_the_cap() -> None:
    policy = RetryPolicy(first_s=0.1, max_s=1.0, multiplier=2.0)
    assert list(itertools.islice(policy.delays(), 6)) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_a_policy_of_n_attempts_has_n_minus_one_pauses() -> None:
    assert len(list(RetryPolicy(first_s=0.5, max_s=2.0, attempts=4).delays())) == 3
    assert list(RetryPolicy(attempts=1).delays()) == []


def test_the_nth_pause_never_overflows_past_the_cap() -> None:
    assert RetryPolicy(first_s=1.0, max_s=30.0, multiplier=10.0).delay(10_000) == 30.0


@pytest.mark.parametrize("bad", [{"first_s": 2.0, "max_s": 1.0}, {"multiplier": 0.5}, {"budget_s": -1.0},
                                 {"attempts": 0}])
def test_a_policy_that_makes_no_sense_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


async def test_run_retries_what_it_is_told_to_until_it_succeeds() -> None:
    failures = iter([nats.errors.NoRespondersError(), nats.errors.TimeoutError()])
    seen: list[float] = []

    async def flaky() -> str:
        for exc in failures:
            raise exc
        return "stored"

    policy = RetryPolicy(first_s=0.01, max_s=0.02, attempts=5)
    assert await policy.run(flaky, retry_on=transient_js_error, on_retry=lambda exc, pause: seen.append(pause)) \
        == "stored"
    assert seen == pytest.approx([0.01, 0.02])


async def test_run_raises_at_once_what_it_is_not_told_to_retry() -> None:
    tries = 0

    async def wrong() -> None:
        nonlocal tries
        tries += 1
        raise KeyWrongLastSequenceError(description="wrong last sequence")

    with pytest.raises(KeyWrongLastSequenceError):
        await RetryPolicy(first_s=0.01).run(wrong, retry_on=transient_js_error)
    assert tries == 1


async def test_run_gives_up_after_its_attempts_with_the_last_error() -> None:
    tries = 0

    async def down() -> None:
        nonlocal tries
        tries += 1
        raise nats.errors.NoRespondersError

    with pytest.raises(nats.errors.NoRespondersError):
        await RetryPolicy(first_s=0.001, attempts=3).run(down, retry_on=any_error)
    assert tries == 3


async def test_run_gives_up_once_the_budget_is_spent_and_tries_once_at_its_end() -> None:
    loop = asyncio.get_running_loop()
    tries: list[float] = []
    start = loop.time()

    async def down() -> None:
        tries.append(loop.time() - start)
        raise nats.errors.NoRespondersError

    with pytest.raises(nats.errors.NoRespondersError):
        await RetryPolicy(first_s=0.1, max_s=0.1, budget_s=0.25).run(down, retry_on=transient_js_error)
    # Tries at 0, 0.1 and 0.2, then one at the end of the budget (0.25) rather than a pause past it.
    assert len(tries) == 4
    assert tries[-1] == pytest.approx(0.25, abs=0.05)
    assert loop.time() - start < 0.4


async def test_a_budget_of_zero_means_a_single_try() -> None:
    tries = 0

    async def down() -> None:
        nonlocal tries
        tries += 1
        raise nats.errors.TimeoutError

    with pytest.raises(nats.errors.TimeoutError):
        await RetryPolicy(budget_s=0.0).run(down, retry_on=transient_js_error)
    assert tries == 1


@pytest.mark.parametrize("exc", [
    nats.errors.NoRespondersError(),
    NoStreamResponseError(),
    nats.errors.TimeoutError(),
    ServiceUnavailableError(),
    APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
    APIError(code=500, err_code=10008, description="JetStream system temporarily unavailable"),
    # A publish repeating the Nats-Msg-Id of one still in flight at a leader without its quorum.
    APIError(code=409, err_code=10158, description="duplicate message id is in process"),
    nats.errors.ConnectionReconnectingError(),
])
def test_what_a_leader_election_produces_is_transient(exc: BaseException) -> None:
    assert transient_js_error(exc)


@pytest.mark.parametrize("exc", [
    KeyWrongLastSequenceError(description="wrong last sequence"),
    APIError(code=400, err_code=10054, description="message size exceeds maximum allowed"),
    nats.errors.MaxPayloadError(),
    ValueError("bad params"),
])
def test_what_trying_again_cannot_fix_is_not_transient(exc: BaseException) -> None:
    assert not transient_js_error(exc)


async def test_a_closed_connection_is_transient_only_while_its_client_is_still_open(
        nats_server: NatsServer, nc: Client) -> None:
    closed = await connect_as(nats_server.url, roles.COORDINATOR)
    await closed.close()
    error = nats.errors.ConnectionClosedError()
    assert transient_js_error(error, nc=nc)
    assert not transient_js_error(error, nc=closed)
    assert not transient_js_error(error)
