"""A dataset in the ``data`` bucket that would inflate past ``MAX_DATASET_BYTES`` is answered with a
422 naming it, never inflated; the coordinator keeps serving every other dataset and request."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from coordinator.app import Coordinator
from ktrdr.data import bars_to_bytes, synth
from subjects import limits
from subjects.names import DATA_OBJECTS
from tests.ktrdr.data.npz_bombs import dataset_bomb

CAP = 1 * limits.MIB


async def test_a_dataset_that_inflates_past_the_limit_is_refused_and_the_catalog_keeps_serving(
        api: httpx.AsyncClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", CAP)
    bucket = await coordinator.nc.jetstream().object_store(DATA_OBJECTS)
    bars = 4_000_000  # 32 MiB of timestamps in a few kilobytes
    bomb = dataset_bomb(declared_bars=bars, payload_bars=bars)
    await bucket.put("BOMB/1h", bomb)
    await bucket.put("SYN/1h", bars_to_bytes(synth("SYN", "1h", "2020-01-01", 500, 1)))

    for _ in range(2):  # the second answer comes from the refusal kept for that digest
        refused = await api.get("/api/v1/datasets/BOMB/1h")
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"].startswith("dataset BOMB/1h: inflates past 1 MiB (MAX_DATASET_BYTES")
        assert refused.json()["detail"] == [{"field": "dataset", "message": refused.json()["error"]}]

    shown = await api.get("/api/v1/datasets/SYN/1h")
    assert shown.status_code == 200 and shown.json()["bars"] == 500
    listed = (await api.get("/api/v1/datasets")).json()["datasets"]
    assert [(d["symbol"], d.get("bars")) for d in listed] == [("BOMB", None), ("SYN", 500)]
    assert (await api.get("/health/ready")).status_code == 200
    assert 'ktrdr_api_errors_total{status="422"} 2.0' in (await api.get("/metrics")).text


async def test_an_object_larger_than_the_limit_is_not_downloaded(
        api: httpx.AsyncClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 64 * limits.KIB)
    bucket = await coordinator.nc.jetstream().object_store(DATA_OBJECTS)
    await bucket.put("BIG/1h", bars_to_bytes(synth("BIG", "1h", "2020-01-01", 5_000, 1)))
    shown = await api.get("/api/v1/datasets/BIG/1h")
    assert shown.status_code == 200 and shown.json()["note"].startswith("larger than 64 KiB: not summarised here")
    assert "bars" not in shown.json()


async def test_an_object_whose_info_understates_its_size_is_kept_no_further_than_the_limit(
        api: httpx.AsyncClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 64 * limits.KIB)
    js = coordinator.nc.jetstream()
    bucket = await js.object_store(DATA_OBJECTS)
    await bucket.put("LIAR/1h", bars_to_bytes(synth("LIAR", "1h", "2020-01-01", 5_000, 1)))
    # A writer of the bucket's raw subjects can say anything in an object's info; the digest still matches.
    meta = f"$O.{DATA_OBJECTS}.M.{base64.urlsafe_b64encode(b'LIAR/1h').decode()}"
    stored = await js.get_last_msg(f"OBJ_{DATA_OBJECTS}", meta)
    info = json.loads(stored.data or b"")
    await js.publish(meta, json.dumps({**info, "size": 100}).encode(), headers={"Nats-Rollup": "sub"})
    refused = await api.get("/api/v1/datasets/LIAR/1h")
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == ("dataset LIAR/1h: an object of more than 64 KiB (MAX_DATASET_BYTES, the "
                                       "limit of a dataset)")
