"""Connecting: a server without auth still works (with a warning), and what cannot be fixed by
retrying fails at once with a message that says what to do."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ktrdr.natsd import NatsServer
from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
from ktrdr.security.credentials import CredentialError
from ktrdr.settings import CommonSettings
from subjects import roles
from tests.conftest import auth


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
