"""The IB host's own settings and its one reconnect policy (no NATS, no gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from itertools import islice

import pytest

import ktrdr.runtime.entry
from host_ib.gateway import Gateway
from host_ib.settings import IbSettings
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.ib.errors import ConnectionLost
from ktrdr.ib.pacing import PACING_BACKOFF
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from ktrdr.settings import CommonSettings


def test_ib_settings_read_the_ktrdr_ib_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_IB_HOST", "gw.lan")
    monkeypatch.setenv("KTRDR_IB_PORT", "7497")
    monkeypatch.setenv("KTRDR_IB_CLIENT_ID", "7")
    monkeypatch.setenv("KTRDR_IB_RECONNECT_GIVE_UP_S", "42")
    monkeypatch.setenv("KTRDR_IB_PACING_BACKOFF_S", "3")
    monkeypatch.setenv("KTRDR_IB_LOCK_TTL_S", "9")
    monkeypatch.setenv("KTRDR_WORKER_ID", "ib-a")
    s = IbSettings()
    assert (s.ib_host, s.ib_port, s.ib_client_id) == ("gw.lan", 7497, 7)
    assert s.ib_reconnect_give_up_s == 42.0 and s.ib_pacing_backoff_s == 3.0
    assert s.ib_lock_ttl_s == 9.0 and s.worker_id == "ib-a"  # the common and worker settings too


def test_a_plain_worker_has_no_ib_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_IB_PORT", "7497")
    # Only the lock's TTL is common: the coordinator creates the lock's bucket with it.
    assert [f for f in WorkerSettings.model_fields if f.startswith("ib_")] == ["ib_lock_ttl_s"]
    assert "ib_lock_ttl_s" in CommonSettings.model_fields
    assert not hasattr(WorkerSettings(), "ib_port")
    ib_only = set(IbSettings.model_fields) - set(WorkerSettings.model_fields)
    assert ib_only and all(f.startswith("ib_") for f in ib_only)


def test_the_ib_host_runs_on_ib_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_IB_PORT", "7497")
    monkeypatch.setattr(ktrdr.runtime.entry, "setup_logging", lambda level: None)
    built: list[WorkerSettings] = []

    class Built(Exception):
        pass

    def build(settings: WorkerSettings) -> Worker:
        built.append(settings)
        raise Built

    with pytest.raises(Built):
        ktrdr.runtime.entry.run_worker(build, IbSettings)
    assert isinstance(built[0], IbSettings) and built[0].ib_port == 7497
    with pytest.raises(Built):
        ktrdr.runtime.entry.run_worker(build)
    assert type(built[1]) is WorkerSettings


def test_the_reconnect_policy_is_the_settings() -> None:
    policy = IbSettings().reconnect_policy()
    assert list(islice(policy.delays(), 7)) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.budget_s == 900.0 and policy.attempts is None  # the gateway tries for as long as it takes
    # A max below the min: pauses of the min, never shorter than asked.
    never_shorter = IbSettings(ib_reconnect_min_s=5, ib_reconnect_max_s=2).reconnect_policy()
    assert list(islice(never_shorter.delays(), 3)) == [5.0, 5.0, 5.0]


def test_the_pacing_backoff_is_ibs_rule() -> None:
    # A minute after a pacing error, doubled per repeat up to ten minutes; the sixth error in a row fails.
    assert list(PACING_BACKOFF.delays()) == [60.0, 120.0, 240.0, 480.0, 600.0]
    assert IbSettings().pacing_backoff() == PACING_BACKOFF
    assert list(IbSettings(ib_pacing_backoff_s=0.5).pacing_backoff().delays()) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert list(IbSettings(ib_pacing_backoff_s=900).pacing_backoff().delays()) == [900.0] * 5


def test_the_bounds_of_a_download_and_a_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = IbSettings()
    assert (defaults.ib_segment_max_reconnects, defaults.ib_segment_stall_s) == (3, 900.0)
    assert (defaults.ib_head_timeout_s, defaults.ib_reply_timeout_s, defaults.ib_pacing_give_up_s) == (5.0, 4.0, 300.0)
    assert defaults.segment_reconnects().attempts == 4 and list(defaults.segment_reconnects().delays()) == [0.0] * 3
    for name, value in [("SEGMENT_MAX_RECONNECTS", "1"), ("SEGMENT_STALL_S", "30"), ("HEAD_TIMEOUT_S", "0.5"),
                        ("REPLY_TIMEOUT_S", "2"), ("PACING_GIVE_UP_S", "45")]:
        monkeypatch.setenv(f"KTRDR_IB_{name}", value)
    s = IbSettings()
    assert (s.ib_segment_max_reconnects, s.ib_segment_stall_s, s.ib_head_timeout_s, s.ib_reply_timeout_s) == (
        1, 30.0, 0.5, 2.0)
    assert s.pacing_backoff().budget_s == 45.0 and s.segment_reconnects().attempts == 2


class Unreachable:
    """An IbClient whose gateway never answers: records when each connection attempt was made."""

    connected = False

    def __init__(self) -> None:
        self.attempts: list[float] = []

    def on_disconnect(self, callback: Callable[[], None]) -> None:
        pass

    async def connect(self, host: str, port: int, *, client_id: int, timeout: float) -> None:
        self.attempts.append(asyncio.get_running_loop().time())
        raise ConnectionLost(f"cannot connect to IB at {host}:{port}")

    async def disconnect(self) -> None:
        pass


async def test_the_gateway_tries_with_the_policys_pauses_and_a_download_gives_up_after_its_budget() -> None:
    client = Unreachable()
    gateway = Gateway(settings=IbSettings(ib_reconnect_min_s=0.05, ib_reconnect_max_s=0.2,
                                          ib_reconnect_give_up_s=0.8), client=client)  # type: ignore[arg-type]
    gateway.start()
    try:
        with pytest.raises(ConnectionLost):
            await gateway.ensure_connected(CancelToken())  # standby: never connects, so no waiting
        assert client.attempts == []
        gateway.activate()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await gateway.ensure_connected(CancelToken())
        assert 0.8 - 0.05 <= loop.time() - started < 2.5
        gaps = [b - a for a, b in zip(client.attempts, client.attempts[1:], strict=False)]
        assert len(gaps) >= 4
        for gap, pause in zip(gaps, [0.05, 0.1, 0.2, 0.2], strict=False):
            assert pause - 0.01 <= gap < pause + 0.5  # never shorter than the policy says
        assert gateway.state == "connecting"  # it goes on trying while the host is active

        # A cancel is noticed while waiting (within a second), long before the budget is spent.
        gateway.reconnect_policy = gateway.reconnect_policy.within(30.0)
        token = CancelToken()
        loop.call_later(0.1, token.cancel, "user asked")
        started = loop.time()
        with pytest.raises(OperationCancelled):
            await gateway.ensure_connected(token)
        assert loop.time() - started < 2.0
    finally:
        await gateway.close()
