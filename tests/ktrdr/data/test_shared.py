from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from nats.aio.client import Client

from ktrdr.data import DataStore, synth
from ktrdr.data.shared import fetch_dataset, publish_dataset
from subjects.names import DATA_OBJECTS


async def test_second_store_gets_data_from_bucket_and_caches_by_digest(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    origin = DataStore(root=tmp_path / "origin")
    df = synth("EURUSD", "1h", "2024-01-01", 5000, seed=2)
    origin.save("EURUSD", "1h", df)
    published = await publish_dataset(js, origin, "EURUSD", "1h")  # creates the bucket
    assert published.name == "EURUSD/1h" and published.digest.startswith("SHA-256=")
    await js.object_store(DATA_OBJECTS)

    # The origin's files vanish: the other machine can only get the bars from the bucket.
    origin.path("EURUSD", "1h").unlink()
    remote = DataStore(root=tmp_path / "remote")
    first = await fetch_dataset(js, remote, "EURUSD", "1h")
    assert not first.cached and first.digest == published.digest
    pd.testing.assert_frame_equal(remote.load("EURUSD", "1h"), df, check_freq=False)

    again = await fetch_dataset(js, remote, "EURUSD", "1h")
    assert again.cached and again.digest == first.digest

    # New bars upstream: a new digest means one more download.
    origin.save("EURUSD", "1h", synth("EURUSD", "1h", "2024-01-01", 6000, seed=2))
    updated = await publish_dataset(js, origin, "EURUSD", "1h")
    assert updated.digest != published.digest
    third = await fetch_dataset(js, remote, "EURUSD", "1h")
    assert not third.cached and len(remote.load("EURUSD", "1h")) == 6000


async def test_fetch_unknown_dataset_fails(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    store = DataStore(root=tmp_path / "a")
    store.save("X", "1d", synth("X", "1d", "2024-01-01", 10))
    await publish_dataset(js, store, "X", "1d")
    with pytest.raises(Exception, match="not found|NotFound"):
        await fetch_dataset(js, store, "Y", "1d")
