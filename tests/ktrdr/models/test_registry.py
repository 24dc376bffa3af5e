"""The model registry: versioned bundles in the ``models`` object store."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from ktrdr.models import ModelNotFoundError, list_models, load_model, parse_model_ref, show_model
from ktrdr.models import save_model as store
from ktrdr.models.registry import ModelTampered, pinned_nuids, register_model
from ktrdr.runtime.objects import ObjectBucket, collect_orphans
from ktrdr.training import load_bundle, train_strategy
from subjects import names
from tests.ktrdr.training.planted import planted_bars, strategy_yaml


async def save_model(js: JetStreamContext, name: str, bundle: bytes, metadata: dict[str, Any]) -> int:
    """Saved as a training does, and registered as the coordinator does when that training completes."""
    version = await store(js, name, bundle, metadata)
    await register_model(js, name, version)
    return version


async def test_a_bundle_round_trips_through_the_registry(nc: Client) -> None:
    js = nc.jetstream()
    result = await asyncio.to_thread(train_strategy, strategy_yaml(epochs=2), {"1h": planted_bars(1500)},
                                     device="cpu")
    version = await save_model(js, "planted", result.bundle, {"symbol": "PLANT", "metrics": {"epochs_run": 2}})
    assert version == 1
    loaded = await load_model(js, "planted")
    assert loaded == result.bundle
    bundle = load_bundle(loaded)
    assert bundle.feature_names == result.feature_names
    assert bundle.strategy["name"] == "planted"
    shown = await show_model(js, "planted", 1)
    assert shown.ref == "planted@1" and shown.size == len(result.bundle)
    assert shown.metadata["symbol"] == "PLANT" and shown.metadata["metrics"] == {"epochs_run": 2}


async def test_each_save_is_a_new_version_and_the_latest_is_the_default(nc: Client) -> None:
    js = nc.jetstream()
    assert [await save_model(js, "m", f"bundle {i}".encode(), {}) for i in (1, 2)] == [1, 2]
    await save_model(js, "other", b"x", {})
    assert await load_model(js, "m") == b"bundle 2"
    assert await load_model(js, "m", 1) == await load_model(js, "m", "1") == b"bundle 1"
    assert (await show_model(js, "m")).version == 2
    assert [v.ref for v in await list_models(js)] == ["m@1", "m@2", "other@1"]


async def test_concurrent_saves_never_share_a_version(nc: Client) -> None:
    js = nc.jetstream()
    await save_model(js, "race", b"first", {})  # the bucket exists before the race
    versions = await asyncio.gather(*(save_model(js, "race", f"b{i}".encode(), {}) for i in range(6)))
    assert sorted(versions) == [2, 3, 4, 5, 6, 7]
    contents = {await load_model(js, "race", v) for v in versions}
    assert contents == {f"b{i}".encode() for i in range(6)}


async def test_unknown_models_and_versions_are_named_in_the_error(nc: Client) -> None:
    js = nc.jetstream()
    assert await list_models(js) == []
    with pytest.raises(ModelNotFoundError, match="no model named 'ghost'"):
        await load_model(js, "ghost")
    await save_model(js, "ghost", b"boo", {})
    with pytest.raises(ModelNotFoundError, match="no version 9"):
        await show_model(js, "ghost", 9)


async def test_a_bundle_written_over_or_deleted_after_its_registration_still_loads_as_registered(
        nc: Client) -> None:
    js = nc.jetstream()
    version = await save_model(js, "neuro", b"trained weights", {})
    # What a stolen worker credential can do: store other bytes under the same version, then delete it.
    models = ObjectBucket(js=js, bucket=names.MODELS_OBJECTS)
    await models.put(f"neuro/{version}", b"negated weights")
    assert (await show_model(js, "neuro", version)).size == len(b"negated weights")
    assert await load_model(js, "neuro", version) == b"trained weights"
    # Registering again keeps the first registration: the overwrite is not adopted.
    await register_model(js, "neuro", version)
    assert await load_model(js, "neuro") == b"trained weights"
    await models.delete(f"neuro/{version}")
    assert (await show_model(js, "neuro")).version == version  # found from its registration
    # The coordinator's sweeps keep the registered bytes, which no info names any more.
    suspects = await collect_orphans(js, names.MODELS_OBJECTS, suspects=set(), keep=await pinned_nuids(js))
    await collect_orphans(js, names.MODELS_OBJECTS, suspects=suspects, keep=await pinned_nuids(js))
    assert await load_model(js, "neuro", version) == b"trained weights"


async def test_registered_bytes_that_were_damaged_are_refused_naming_the_model(nc: Client) -> None:
    js = nc.jetstream()
    version = await save_model(js, "neuro", b"trained weights", {})
    pins = await js.key_value(names.MODEL_PINS_BUCKET)
    pin = json.loads((await pins.get(names.model_pin_key("neuro", version))).value or b"{}")
    await js.purge_stream(f"OBJ_{names.MODELS_OBJECTS}", subject=names.object_chunks(names.MODELS_OBJECTS, pin["nuid"]))
    with pytest.raises(ModelTampered, match=r"neuro@1: the bytes registered when it was trained are damaged"):
        await load_model(js, "neuro", version)


async def test_a_version_nobody_registered_is_not_loaded(nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktrdr.models import registry

    monkeypatch.setattr(registry, "PIN_WAIT", registry.RetryPolicy(first_s=0.01, max_s=0.01, budget_s=0.05))
    js = nc.jetstream()
    version = await store(js, "stray", b"bytes", {})
    with pytest.raises(ModelTampered, match=r"stray@1 was never registered by the coordinator"):
        await load_model(js, "stray", version)


@pytest.mark.parametrize(("ref", "expected"), [("m", ("m", None)), ("m@3", ("m", 3)), ("m@latest", ("m", None))])
def test_model_refs_name_a_version_or_the_latest(ref: str, expected: tuple[str, int | None]) -> None:
    assert parse_model_ref(ref) == expected


@pytest.mark.parametrize("ref", ["m@0", "m@x", "a/b", "@1", ""])
def test_bad_model_refs_are_refused(ref: str) -> None:
    with pytest.raises(ValueError):
        parse_model_ref(ref)
