"""Training requests are checked, strategy included, before anything is dispatched: through
``POST /api/v1/trainings`` and through every other way in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.models import Operation, decode
from tests.backtesting import publish_synth
from tests.ktrdr.training.planted import strategy_yaml


async def test_a_packaged_strategy_is_queued_with_its_defaults_filled_in(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher", start="2023-12-01")  # the bars it trains on are stored
    response = await api.post("/api/v1/trainings", json={"strategy": "neuro_mean_reversion", "epochs": 3,
                                                         "start": "2024-01-01"})
    assert response.status_code == 201, response.text
    op = response.json()
    assert op["type"] == "training" and op["status"] == "pending"
    assert op["route"] == "cpu"  # no GPU host holds a lease
    assert {k: v for k, v in op["params"].items() if v is not None} == {
        "strategy": "neuro_mean_reversion", "symbols": ["SYNTH"], "timeframes": ["1h"], "start": "2024-01-01T00:00:00",
        "model_name": "neuro_mean_reversion", "epochs": 3}
    assert coordinator.ops.get(op["op_id"]) is not None


@pytest.mark.parametrize(("body", "names_field"), [
    ({}, "invalid strategy"),
    ({"strategy": "neuro_mean_reversion", "epochs": 0}, "invalid epochs"),
    ({"strategy": "neuro_mean_reversion", "symbols": ["A", "B"]}, "invalid symbols"),
    ({"strategy": "neuro_mean_reversion", "timeframes": ["7h"]}, "invalid timeframes"),
    ({"strategy": "neuro_mean_reversion", "model_name": "a/b"}, "invalid model_name"),
    ({"strategy": "neuro_mean_reversion", "start": "2024-02-01", "end": "2024-01-01"}, "start is after end"),
    ({"strategy": "neuro_mean_reversion", "bogus": 1}, "invalid bogus"),
    ({"strategy": "no_such_strategy"}, "invalid strategy: unknown strategy 'no_such_strategy': use a packaged name"),
    ({"strategy": "/etc/hostname"}, "invalid strategy: unknown strategy '/etc/hostname': use a packaged name"),
    ({"strategy": "sma_crossover"}, "rule-based"),
    ({"strategy": strategy_yaml().replace("period: 14", "period: -3", 1)}, "invalid strategy"),
    # A key the schema does not know is a typo, not a default: training.batch_size was meant.
    ({"strategy": strategy_yaml(batchsize=256)}, "training.batchsize: Extra inputs are not permitted"),
    ({"strategy": strategy_yaml(), "timeframes": ["4h"]}, "invalid timeframes: the strategy's nn_inputs need ['1h']"),
])
async def test_bad_training_requests_get_a_422_naming_the_field(
        api: httpx.AsyncClient, coordinator: Coordinator, body: dict[str, Any], names_field: str) -> None:
    response = await api.post("/api/v1/trainings", json=body)
    assert response.status_code == 422, response.text
    assert names_field in response.json()["error"]
    assert list(coordinator.ops.all()) == []


async def test_a_training_submitted_over_nats_is_checked_and_filled_in_the_same_way(
        coordinator: Coordinator, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    submit = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"
    refused = await nc.request(submit, b'{"type": "training", "params": {"strategy": "sma_crossover"}}', timeout=5)
    assert refused.headers and refused.headers["Nats-Service-Error-Code"] == "422"
    assert "rule-based" in refused.headers["Nats-Service-Error"]
    assert list(coordinator.ops.all()) == []
    reply = await nc.request(submit, b'{"type": "training", "params": {"strategy": "neuro_mean_reversion"}}',
                             timeout=5)
    op = decode(Operation, reply.data)
    assert op.params["symbols"] == ["SYNTH"] and op.params["model_name"] == "neuro_mean_reversion"
