"""What the CLI tests that need no platform share: a KTRDR_HOME of their own, with nothing from the
environment pointing the CLI elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("KTRDR_NATS_URL", "KTRDR_NATS_CREDS", "KTRDR_NATS_CA", "KTRDR_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("KTRDR_HOME", str(home))
    return home
