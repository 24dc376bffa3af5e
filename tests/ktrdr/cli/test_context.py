"""How the CLI finds the platform: the context ``ktrdr up`` wrote, another one by ``--context`` or
``KTRDR_CONTEXT``, or ``KTRDR_NATS_URL`` for a server of one's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coordinator.app import Coordinator
from ktrdr.client.context import Context, write_context
from ktrdr.client.settings import ClientSettings
from ktrdr.natsd import NatsServer, free_port
from subjects import roles
from tests.conftest import creds
from tests.ktrdr.cli.running import cli, error_lines


def test_without_a_context_the_cli_uses_the_default_url(home: Path) -> None:
    s = ClientSettings()
    assert s.nats_url == "nats://127.0.0.1:4222" and s.nats_url_source == "the default"


def test_the_default_context_gives_url_credential_and_api(home: Path) -> None:
    write_context(home, Context(name="default", nats_url="nats://127.0.0.1:14222", api_url="http://127.0.0.1:18000",
                                nats_creds="/x/client.nk"))
    s = ClientSettings()
    assert (s.nats_url, s.api_url, str(s.nats_creds)) == ("nats://127.0.0.1:14222", "http://127.0.0.1:18000",
                                                          "/x/client.nk")
    assert s.nats_url_source == f"the context {home / 'contexts' / 'default.json'}"


def test_a_url_in_the_environment_means_that_server_and_not_the_default_context(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_context(home, Context(name="default", nats_url="nats://127.0.0.1:14222", nats_creds="/x/client.nk"))
    monkeypatch.setenv("KTRDR_NATS_URL", "nats://elsewhere:4222")
    s = ClientSettings()
    assert s.nats_url == "nats://elsewhere:4222" and s.nats_creds is None and s.nats_url_source == "KTRDR_NATS_URL"


def test_a_context_named_by_name_or_path_and_a_missing_one(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    write_context(home, Context(name="lab", nats_url="nats://lab:4222"))
    monkeypatch.setenv("KTRDR_CONTEXT", "lab")
    assert ClientSettings().nats_url == "nats://lab:4222"
    elsewhere = write_context(tmp_path / "other-home", Context(name="default", nats_url="nats://other:4222"))
    monkeypatch.setenv("KTRDR_CONTEXT", str(elsewhere))
    assert ClientSettings().nats_url == "nats://other:4222"
    monkeypatch.setenv("KTRDR_CONTEXT", "nope")
    assert ClientSettings().context_problem == (f"no context {home / 'contexts' / 'nope.json'}: `ktrdr up` writes one; "
                                             "`ktrdr context` lists them")


async def test_the_cli_follows_the_context_it_is_given(nats_server: NatsServer, coordinator: Coordinator,
                                                       tmp_path: Path) -> None:
    home = tmp_path / "home"
    # The default context points at nothing; "live" at the running platform.
    write_context(home, Context(name="default", nats_url=f"nats://127.0.0.1:{free_port()}"))
    write_context(home, Context(name="live", nats_url=nats_server.url, nats_creds=str(creds(roles.CLIENT))))
    # Neither a URL nor a credential in the environment: the context decides both.
    unset = ("KTRDR_NATS_URL", "KTRDR_NATS_CREDS", "KTRDR_CONTEXT")
    down = await cli(None, "ops", "list", unset=unset, KTRDR_HOME=str(home))
    assert down.returncode == 3 and "the URL from the context" in down.stderr
    up = await cli(None, "--context", "live", "ops", "list", "--json", unset=unset, KTRDR_HOME=str(home))
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["total"] == 0
    missing = await cli(None, "--context", "nope", "ops", "list", unset=unset, KTRDR_HOME=str(home))
    assert missing.returncode == 2 and error_lines(missing) == [
        f"error: no context {home / 'contexts' / 'nope.json'}: `ktrdr up` writes one; `ktrdr context` lists them"]
