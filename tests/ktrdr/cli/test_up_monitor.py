"""`ktrdr up` leaves nats-server's monitoring port off unless asked: it has no auth and answers any
web page with Access-Control-Allow-Origin: *, which nats-server cannot turn off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import ktrdr.cli.app as cli_app
import ktrdr.cli.up as up
from ktrdr.client.settings import ClientSettings
from ktrdr.natsd import free_port
from ktrdr.security.fleet import Fleet


class Provisioned(Exception):
    """Stops run_up once the server's config is written, before anything starts."""


def test_the_monitor_port_option_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int | None] = []

    def fake_run_up(**kwargs: Any) -> int:
        seen.append(kwargs["monitor_port"])
        return 0

    monkeypatch.setattr(up, "run_up", fake_run_up)
    monkeypatch.setattr(cli_app, "setup_logging", lambda level: None)
    for args in ([], ["--monitor-port", "8222"]):
        assert CliRunner().invoke(cli_app.app, ["up", "--no-gpu", *args]).exit_code == 0
    assert seen == [None, 8222]


@pytest.mark.parametrize("monitor_port", [None, "free"])
def test_the_server_config_serves_monitoring_only_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monitor_port: str | None) -> None:
    port = free_port() if monitor_port else None
    real_provision = up.provision

    def provision(home: Path, **kwargs: Any) -> Fleet:
        fleet = real_provision(home, **kwargs)
        raise Provisioned(fleet.config.read_text())

    monkeypatch.setattr(up, "provision", provision)
    monkeypatch.setenv("KTRDR_HOME", str(tmp_path))
    with pytest.raises(Provisioned) as written:
        up.run_up(settings=ClientSettings(context=None), explicit_nats=False, nats_port=free_port(), monitor_port=port,
                  api_port=free_port(), backtest_workers=0, training_workers=0, gpu=False)
    config = json.loads(str(written.value))  # the config ktrdr writes is JSON, which nats-server reads
    assert config.get("http") == (None if port is None else f"127.0.0.1:{port}")
