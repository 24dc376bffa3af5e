from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from nats.aio.client import Client

from ktrdr.data import DataStore, synth
from ktrdr.data.shared import adopt_dataset, fetch_dataset, publish_dataset
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


async def test_adopting_merges_the_buckets_bars_and_keeps_the_local_ones(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    bars = synth("EURUSD", "1h", "2024-01-01", 300, seed=3)
    first_host, second_host = DataStore(root=tmp_path / "one"), DataStore(root=tmp_path / "two")
    assert await adopt_dataset(js, second_host, "EURUSD", "1h") == 0  # no bucket yet: nothing to adopt
    first_host.save("EURUSD", "1h", bars.iloc[:200])
    await publish_dataset(js, first_host, "EURUSD", "1h")
    # The second host has later bars, one of them (bar 199) its own revision of a shared timestamp.
    mine = bars.iloc[199:].copy()
    mine.iloc[0, mine.columns.get_loc("volume")] = mine["volume"].iloc[0] + 123
    second_host.save("EURUSD", "1h", mine)

    assert await adopt_dataset(js, second_host, "EURUSD", "1h") == 199
    merged = second_host.load("EURUSD", "1h")
    assert len(merged) == 300 and merged.index.is_monotonic_increasing
    assert merged["volume"].iloc[199] == mine["volume"].iloc[0]  # local bars win
    # Publishing now loses nothing the first host put in the bucket.
    await publish_dataset(js, second_host, "EURUSD", "1h")
    elsewhere = DataStore(root=tmp_path / "elsewhere")
    await fetch_dataset(js, elsewhere, "EURUSD", "1h")
    assert len(elsewhere.load("EURUSD", "1h")) == 300
    # The bucket now holds what the second host published: nothing more to take in.
    assert await adopt_dataset(js, second_host, "EURUSD", "1h") == 0


async def test_a_store_without_the_dataset_adopts_all_of_it(nc: Client, tmp_path: Path) -> None:
    js = nc.jetstream()
    origin = DataStore(root=tmp_path / "origin")
    origin.save("X", "1d", synth("X", "1d", "2024-01-01", 40))
    await publish_dataset(js, origin, "X", "1d")
    fresh = DataStore(root=tmp_path / "fresh")
    assert await adopt_dataset(js, fresh, "X", "1d") == 40
    assert await adopt_dataset(js, fresh, "Y", "1d") == 0
