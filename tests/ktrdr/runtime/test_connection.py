"""Connecting: a server without auth still works (with a warning), and what cannot be fixed by
retrying fails at once with a message that says what to do."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
from ktrdr.security.credentials import CredentialError
from ktrdr.settings import CommonSettings
from subjects import roles
from tests.conftest import auth, creds
from tests.support import assert_eventually


async def test_a_server_without_auth_still_works_with_a_warning(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with NatsServer(store_dir=tmp_path / "nats") as server:
        caplog.set_level(logging.WARNING, logger="ktrdr.runtime.connection")
        nc = await connect(server.url, name="t", auth=NatsAuth(), reconnect=False)
        await nc.close()
    assert any("without a credential" in r.getMessage() for r in caplog.records)


async def test_a_role_credential_is_found_under_home_and_an_explicit_one_wins(tmp_path: Path) -> None:
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "client.nk").write_text(auth(roles.CLIENT).credential.seed)  # type: ignore[union-attr]
    found = NatsAuth.resolve(CommonSettings(home=tmp_path), role=roles.CLIENT)
    assert found.credential == auth(roles.CLIENT).credential
    explicit = NatsAuth.resolve(CommonSettings(home=tmp_path, nats_creds=auth(roles.VIEWER).credential_file),
                                role=roles.CLIENT)
    assert explicit.credential == auth(roles.VIEWER).credential
    assert NatsAuth.resolve(CommonSettings(home=tmp_path), role=roles.WORKER).credential is None


def test_a_missing_credential_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read"):
        NatsAuth.resolve(CommonSettings(home=tmp_path, nats_creds=tmp_path / "nope.nk"), role=roles.CLIENT)


async def test_a_wrong_credential_fails_at_once_rather_than_retrying_for_minutes(nats_server: NatsServer) -> None:
    from ktrdr.security.credentials import NatsCredential

    with pytest.raises(NatsConnectError, match="refused the credential"):
        # reconnect=True: a worker's connection, which would otherwise retry forever.
        await connect(nats_server.url, name="t", auth=NatsAuth(credential=NatsCredential.generate()))


async def test_a_lost_server_is_named_at_growing_intervals_not_four_times_a_second(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ktrdr.runtime.connection")
    nc = await connect(nats_server.url, name="t", auth=auth(roles.WORKER))
    try:
        nats_server.stop()
        await assert_eventually(lambda: _said(caplog, "cannot reach"), message="the lost server was not named")
        first = time.monotonic()
        await assert_eventually(lambda: time.monotonic() - first >= 3.0, timeout=5)
        lines = _said(caplog, "cannot reach")
        # nats-py tries every 0.25 s (12 times in 3 s); the line comes at 0, 0.25, 0.75, 1.75 s...
        assert 2 <= len(lines) <= 5, lines
        assert all(nats_server.url in line and str(creds(roles.WORKER)) in line for line in lines), lines
        nats_server.start()
        await assert_eventually(lambda: nc.is_connected, timeout=10, message="no reconnect")
    finally:
        await nc.close()


async def test_waiting_for_an_unreachable_server_ends_when_cancelled() -> None:
    task = asyncio.ensure_future(connect(f"nats://127.0.0.1:{free_port()}", name="t", auth=auth(roles.WORKER)))
    await asyncio.sleep(0.5)  # inside the retry loop, between tries or in one
    assert not task.done()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert task in done and task.cancelled()


def _said(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]
