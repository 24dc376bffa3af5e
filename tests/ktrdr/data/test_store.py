from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.data import BarValidationError, DataStore, find_gaps, synth, write_csv

HEADER = "timestamp,open,high,low,close,volume\n"
ROWS = [
    "2024-01-01T00:00:00Z,1.10,1.12,1.09,1.11,100",
    "2024-01-01T01:00:00Z,1.11,1.13,1.10,1.12,150",
    "2024-01-01T02:00:00Z,1.12,1.14,1.11,1.13,120",
]


def write(tmp_path: Path, rows: list[str], name: str = "EURUSD_1h.csv") -> Path:
    f = tmp_path / name
    f.write_text(HEADER + "\n".join(rows) + "\n")
    return f


def test_import_first_ktrdr_layout_and_load(tmp_path: Path) -> None:
    store = DataStore(root=tmp_path / "store")
    info = store.import_csv(write(tmp_path, ROWS))
    assert (info.symbol, info.timeframe, info.bars) == ("EURUSD", "1h", 3)
    df = store.load("EURUSD", "1h")
    assert list(df.columns) == ["open", "high", "low", "close", "volume"]
    assert str(df.index.tz) == "UTC" and df.index[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    assert df["close"].tolist() == [1.11, 1.12, 1.13]
    assert store.list() == [("EURUSD", "1h")]
    sub = store.load("EURUSD", "1h", start="2024-01-01 01:00", end="2024-01-01T01:00:00Z")
    assert len(sub) == 1


def test_import_any_csv_with_explicit_names(tmp_path: Path) -> None:
    f = tmp_path / "whatever.csv"
    f.write_text("Date,Open,High,Low,Close,Volume\n2024-01-01,10,11,9,10.5,5\n2024-01-02,10.5,11,10,10.8,6\n")
    store = DataStore(root=tmp_path / "s")
    with pytest.raises(ValueError, match="not SYMBOL_timeframe.csv"):
        store.import_csv(f)
    assert store.import_csv(f, symbol="AAPL", timeframe="1d").bars == 2


@pytest.mark.parametrize(("row", "rule"), [
    ("2024-01-01T02:00:00Z,1.12,1.10,1.11,1.13,120", "high < max(open, close)"),
    ("2024-01-01T02:00:00Z,1.12,1.14,1.13,1.11,120", "low > min(open, close)"),
    ("2024-01-01T02:00:00Z,1.12,1.14,1.11,1.13,-1", "volume < 0"),
    ("2024-01-01T02:00:00Z,1.12,1.14,1.11,,120", "close is missing"),
    ("2024-01-01T02:00:00Z,1.12,1.14,1.11,abc,120", "close 'abc' is not a number"),
    ("2024-01-01T02:00:00Z,1.12,1.14,1.11,inf,120", "close is NaN or infinite"),
    ("2024-01-01T01:00:00Z,1.12,1.14,1.11,1.13,120", "duplicate timestamp"),
    ("2024-01-01T00:30:00Z,1.12,1.14,1.11,1.13,120", "earlier than the previous row"),
    ("not a time,1.12,1.14,1.11,1.13,120", "timestamp missing or unparseable"),
])
def test_bad_rows_are_refused_naming_line_timestamp_and_rule(tmp_path: Path, row: str, rule: str) -> None:
    f = write(tmp_path, [*ROWS[:2], row, "2024-01-01T05:00:00Z,1,1,1,1,1"])
    store = DataStore(root=tmp_path / "s")
    with pytest.raises(BarValidationError) as info:
        store.import_csv(f)
    e = info.value
    assert e.line == 4 and e.row == 2 and rule in e.rule
    assert "line 4" in str(e) and str(f) in str(e) and rule in str(e)
    assert not store.list()  # nothing was stored


def test_load_validates_the_stored_file(tmp_path: Path) -> None:
    store = DataStore(root=tmp_path)
    df = synth("X", "1h", "2024-01-01", 50, seed=1)
    store.save("X", "1h", df)
    bad = df.copy()
    bad.iloc[7, bad.columns.get_loc("high")] = bad.iloc[7]["low"] - 1
    from ktrdr.data import bars_to_bytes
    store.path("X", "1h").write_bytes(bars_to_bytes(bad))
    with pytest.raises(BarValidationError, match="high < max") as info:
        store.load("X", "1h")
    assert info.value.row == 7 and info.value.timestamp == df.index[7]


def test_merge_without_duplicates_new_bar_wins(tmp_path: Path) -> None:
    store = DataStore(root=tmp_path)
    df = synth("X", "1h", "2024-01-01", 100, seed=1)
    store.save("X", "1h", df.iloc[:60])
    later = df.iloc[40:].copy()
    later.iloc[0, later.columns.get_loc("volume")] = 999.0
    assert store.merge("X", "1h", later) == 40
    got = store.load("X", "1h")
    assert len(got) == 100 and got.index.is_unique and got.index.is_monotonic_increasing
    assert got["volume"].iloc[40] == 999.0
    assert store.merge("X", "1h", df.iloc[10:20]) == 0


def test_info_and_gaps(tmp_path: Path) -> None:
    idx = pd.date_range("2024-01-01", "2024-01-31", freq="D", tz="UTC")  # Mon 1 Jan .. Wed 31 Jan
    weekdays = idx[idx.day_of_week < 5]
    keep = weekdays[weekdays != pd.Timestamp("2024-01-17", tz="UTC")]  # a Wednesday missing
    n = len(keep)
    df = pd.DataFrame({"open": np.ones(n), "high": np.ones(n), "low": np.ones(n), "close": np.ones(n),
                       "volume": np.ones(n)}, index=keep)
    store = DataStore(root=tmp_path)
    store.save("X", "1d", df)
    info = store.info("X", "1d")
    assert info.bars == n and info.start == keep[0] and info.end == keep[-1]
    assert len(info.gaps) == 5  # four weekends and the Wednesday
    assert [g.after.day for g in info.unexpected_gaps] == [16]
    assert info.unexpected_gaps[0].missing_bars == 1
    assert info.to_dict()["unexpected_gaps"] == 1
    assert find_gaps(synth("X", "1m", "2024-01-05", 5000).index, "1m") == []


def test_csv_roundtrip_and_load_speed(tmp_path: Path) -> None:
    df = synth("BIG", "1m", "2020-01-01", 1_000_000, seed=3)
    store = DataStore(root=tmp_path)
    store.save("BIG", "1m", df)
    t0 = time.perf_counter()
    got = store.load("BIG", "1m")
    elapsed = time.perf_counter() - t0
    pd.testing.assert_frame_equal(got, df, check_freq=False)
    assert elapsed < 2.0  # in practice a few tens of ms; generous for slow CI machines
    small = df.iloc[:100]
    write_csv(small, tmp_path / "BIG_1m.csv")
    assert "2020-01-01T00:00:00Z" in (tmp_path / "BIG_1m.csv").read_text()
    other = DataStore(root=tmp_path / "other")
    other.import_csv(tmp_path / "BIG_1m.csv")
    pd.testing.assert_frame_equal(other.load("BIG", "1m"), small, check_freq=False, check_names=False)
