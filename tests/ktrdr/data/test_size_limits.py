"""Size limits on market data: a dataset's ``.npz`` is refused as it inflates past
``MAX_DATASET_BYTES`` (never allocating past it), and a CSV import past ``MAX_IMPORT_CSV_BYTES``
or past the bars a dataset holds is refused while it is read; ordinary data is unchanged."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.data import DataStore, bars_from_bytes, bars_to_bytes, csv_io, read_csv, synth
from ktrdr.data.csv_io import sample_csv
from ktrdr.data.validation import BAR_BYTES, OHLCV, DatasetTooLarge
from subjects import limits
from tests.ktrdr.data.npz_bombs import dataset_bomb, npy_header, npz, understate

CAP = 1 * limits.MIB


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", CAP)
    return CAP


def peak_of(work: Callable[[], object]) -> int:
    """The most memory Python and numpy held at once while ``work`` ran (numpy reports its arrays)."""
    tracemalloc.start()
    try:
        work()
    except ValueError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# --- datasets ---------------------------------------------------------------------------------------


def test_a_small_compressed_dataset_that_would_inflate_past_the_cap_is_refused_unallocated(small_cap: int) -> None:
    bars = 2_000_000  # 16 MiB of timestamps, 16 times the cap
    bomb = dataset_bomb(declared_bars=bars, payload_bars=bars)
    assert len(bomb) < 64 * 1024
    with pytest.raises(DatasetTooLarge, match=r"^dataset BOMB/1h: inflates past 1 MiB \(MAX_DATASET_BYTES"):
        bars_from_bytes(bomb, source="dataset BOMB/1h")
    assert peak_of(lambda: bars_from_bytes(bomb, source="bomb")) < 2 * small_cap


def test_a_header_that_understates_its_member_is_refused_without_inflating_the_rest(small_cap: int) -> None:
    with pytest.raises(ValueError, match="member timestamp.npy holds more than its header says"):
        bars_from_bytes(dataset_bomb(declared_bars=0, payload_bars=10_000), source="liar")
    # The zip's own sizes lie too: what inflates is still read no further than the array's header says.
    bomb = dataset_bomb(declared_bars=0, payload_bars=2_000_000)
    bomb = understate(bomb, "timestamp.npy", len(npy_header("<i8", (0,))))
    with pytest.raises(ValueError, match="^liar: not a readable dataset"):
        bars_from_bytes(bomb, source="liar")
    assert peak_of(lambda: bars_from_bytes(bomb, source="liar")) < 2 * small_cap


def test_the_cap_counts_every_array_together(small_cap: int) -> None:
    # Each member alone fits the cap; all six do not.
    bars = small_cap // 8 // 4
    members = {"timestamp.npy": (npy_header("<i8", (bars,)), 8 * bars)}
    members.update({f"{c}.npy": (npy_header("<f8", (bars,)), 8 * bars) for c in OHLCV})
    with pytest.raises(DatasetTooLarge, match="inflates past 1 MiB"):
        bars_from_bytes(npz(members), source="wide")


@pytest.mark.parametrize(("members", "says"), [
    ({"timestamp.npy": (npy_header("|O", (3,)), 0)}, "holds object"),
    ({"timestamp.npy": (npy_header("<f8", (3,)), 24)}, "expected a 1-D int64 array"),
    ({"timestamp.npy": (npy_header("<i8", (3, 2)), 48)}, "expected a 1-D int64 array"),
    ({"timestamp.npy": (npy_header("<i8", (3,)), 8)}, "member timestamp.npy is cut short"),
    ({"timestamp.npy": (b"not an npy header at all", 0)}, "member timestamp.npy is not an array"),
    ({"payload.pkl": (b"cos\nsystem\n", 0)}, "not a dataset: holds"),
])
def test_unexpected_members_dtypes_and_shapes_are_refused(members: dict[str, tuple[bytes, int]], says: str) -> None:
    full = {f"{c}.npy": (npy_header("<f8", (3,)), 24) for c in OHLCV}
    full = {**({} if "payload.pkl" in members else {"timestamp.npy": (npy_header("<i8", (3,)), 24)}), **full,
            **members}
    with pytest.raises(ValueError, match=says):
        bars_from_bytes(npz(full), source="odd")


def test_an_object_array_saved_with_pickle_is_refused_unpickled() -> None:
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {c: np.zeros(1) for c in OHLCV}
    np.savez(buf, timestamp=np.array([object()], dtype=object), **arrays)
    with pytest.raises(ValueError, match="member timestamp.npy holds object"):
        bars_from_bytes(buf.getvalue(), source="pickled")


def test_members_compressed_other_than_with_deflate_are_refused() -> None:
    members = {"timestamp.npy": (npy_header("<i8", (1,)), 8)}
    members.update({f"{c}.npy": (npy_header("<f8", (1,)), 8) for c in OHLCV})
    with pytest.raises(ValueError, match="compressed other than with deflate"):
        bars_from_bytes(npz(members, compression=zipfile.ZIP_BZIP2), source="bz2")


def test_a_zip_directory_larger_than_a_datasets_is_refused_before_it_is_parsed() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for i in range(2_000):
            z.writestr(f"m{i}.npy", b"")
    with pytest.raises(ValueError, match="a zip directory of 2000 entries"):
        bars_from_bytes(out.getvalue(), source="many")
    for junk in (b"", b"PK", b"not a zip file" * 10):
        with pytest.raises(ValueError, match="^junk: not a"):
            bars_from_bytes(junk, source="junk")


def test_ordinary_datasets_load_exactly_as_before_compressed_or_not(tmp_path: Path) -> None:
    df = synth("SYN", "1h", "2020-01-01", 5_000, 3)
    data = bars_to_bytes(df)
    assert all(i.compress_type == zipfile.ZIP_STORED for i in zipfile.ZipFile(io.BytesIO(data)).infolist())
    pd.testing.assert_frame_equal(bars_from_bytes(data, source="plain"), df[list(OHLCV)], check_freq=False)
    squeezed = io.BytesIO()
    np.savez_compressed(squeezed, timestamp=df.index.as_unit("ns").asi8, **{c: df[c].to_numpy() for c in OHLCV})
    pd.testing.assert_frame_equal(bars_from_bytes(squeezed.getvalue(), source="deflated"), df[list(OHLCV)],
                                  check_freq=False)
    store = DataStore(root=tmp_path)
    store.save("SYN", "1h", df)
    pd.testing.assert_frame_equal(store.load("SYN", "1h"), df[list(OHLCV)], check_freq=False)


def test_a_dataset_at_the_bar_limit_is_stored_and_loaded_and_one_bar_more_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 100 * BAR_BYTES)
    store = DataStore(root=tmp_path)
    df = synth("SYN", "1h", "2020-01-01", 101, 1)
    store.save("SYN", "1h", df.iloc[:100])
    assert len(store.load("SYN", "1h")) == 100
    with pytest.raises(DatasetTooLarge, match=r"SYN/1h: 101 bars, more than the 100 a dataset may hold"):
        store.save("SYN", "1h", df)
    with pytest.raises(DatasetTooLarge, match=r"SYN/1h: 101 bars"):
        store.merge("SYN", "1h", df.iloc[100:])
    assert len(store.load("SYN", "1h")) == 100  # what was stored is kept
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 200 * BAR_BYTES)
    data = bars_to_bytes(df)
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 100 * BAR_BYTES)
    with pytest.raises(DatasetTooLarge, match="inflates past 4,800 bytes"):
        bars_from_bytes(data, source="over")


# --- CSV import ------------------------------------------------------------------------------------


def sample(tmp_path: Path, name: str = "EURUSD_1h.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(sample_csv())
    return path


def test_a_csv_file_over_the_import_limit_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sample(tmp_path)
    monkeypatch.setattr(limits, "MAX_IMPORT_CSV_BYTES", 10_000)
    store = DataStore(root=tmp_path / "store")
    with pytest.raises(DatasetTooLarge, match=rf"^{path}: larger than 10,000 bytes \(MAX_IMPORT_CSV_BYTES"):
        store.import_csv(path)
    assert store.list() == []


def test_a_pipe_is_counted_while_it_is_read_and_refused_past_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_IMPORT_CSV_BYTES", 64 * 1024)
    fifo = tmp_path / "EURUSD_1h.csv"
    os.mkfifo(fifo)
    text = sample_csv()
    written: list[int] = []

    def feed() -> None:
        try:
            with fifo.open("wb") as f:
                for _ in range(1_000):  # 40 MiB if it were all read
                    f.write(text)
                    written.append(len(text))
        except BrokenPipeError:
            pass  # the reader stopped, as it should

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        with pytest.raises(DatasetTooLarge, match=r"larger than 64 KiB \(MAX_IMPORT_CSV_BYTES"):
            read_csv(fifo)
    finally:
        writer.join()
    assert sum(written) < 1_000 * len(text)


def test_more_bars_than_a_dataset_holds_are_refused_while_parsing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_DATASET_BYTES", 100 * BAR_BYTES)
    monkeypatch.setattr(csv_io, "CHUNK_ROWS", 64)
    with pytest.raises(DatasetTooLarge, match=r"more than 100 bars, the most a dataset holds"):
        read_csv(sample(tmp_path))


def test_parsing_in_chunks_gives_the_same_bars_and_the_same_line_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = read_csv(sample(tmp_path))
    assert len(whole) == 552
    monkeypatch.setattr(csv_io, "CHUNK_ROWS", 7)
    pd.testing.assert_frame_equal(read_csv(sample(tmp_path)), whole)
    lines = sample_csv().decode().splitlines()
    fields = lines[31].split(",")
    lines[31] = ",".join([*fields[:4], "abc", *fields[5:]])
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 32, row 30, timestamp .*: close 'abc' is not a number"):
        read_csv(bad)


def test_extra_columns_are_not_kept_and_a_header_too_long_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("note,Date,Open,High,Low,Close,Volume,extra\nx,2024-01-01,10,11,9,10.5,5,y\n"
                    "z,2024-01-02,10.5,11,10,10.8,6,w\n")
    df = read_csv(path)
    assert list(df.columns) == list(OHLCV) and df["close"].tolist() == [10.5, 10.8]
    assert str(df.index[1]).startswith("2024-01-02")
    long = tmp_path / "long.csv"
    long.write_text(",".join(f"c{i}" for i in range(3_000)) + "\n")
    with pytest.raises(ValueError, match="the header line is longer than 8192 bytes"):
        read_csv(long)
