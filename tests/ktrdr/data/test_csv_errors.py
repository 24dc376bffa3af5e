"""A bad CSV is refused with one message that names the file, and the line and column at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktrdr.data import DataStore, read_csv
from ktrdr.data.csv_io import LAYOUT, sample_csv
from ktrdr.data.store import UnnamedDataset

HEADER = "timestamp,open,high,low,close,volume\n"


def csv(tmp_path: Path, text: str | bytes, name: str = "EURUSD_1h.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def test_text_in_a_price_column_is_not_a_number_naming_the_line_and_the_value(tmp_path: Path) -> None:
    path = csv(tmp_path, HEADER + "2024-01-01T00:00:00Z,1,2,0.5,1.5,10\n2024-01-01T01:00:00Z,1,2,0.5,abc,10\n")
    with pytest.raises(ValueError, match=r"line 3, .*close 'abc' is not a number") as caught:
        read_csv(path)
    assert str(path) in str(caught.value)


def test_an_empty_cell_is_missing(tmp_path: Path) -> None:
    path = csv(tmp_path, HEADER + "2024-01-01T00:00:00Z,1,,0.5,1.5,10\n")
    with pytest.raises(ValueError, match=r"line 2, .*high is missing"):
        read_csv(path)


def test_a_nan_in_the_data_is_still_reported_as_nan(tmp_path: Path) -> None:
    path = csv(tmp_path, HEADER + "2024-01-01T00:00:00Z,1,2,0.5,NaN,10\n")
    with pytest.raises(ValueError, match=r"line 2, .*close is NaN or infinite"):
        read_csv(path)


@pytest.mark.parametrize(("content", "says"), [
    (b"", "the file is empty"),
    (b"   \n\n", "the file is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"),
    (HEADER.encode(), "a header but no bars"),
    (b"a,b\n1,2\n", "missing columns"),
])
def test_files_that_are_no_csv_of_bars_are_refused_naming_the_file_and_the_layout(
        tmp_path: Path, content: bytes, says: str) -> None:
    path = csv(tmp_path, content)
    with pytest.raises(ValueError) as caught:
        read_csv(path)
    assert str(caught.value).startswith(f"{path}: ") and says in str(caught.value)
    assert LAYOUT in str(caught.value)


def test_a_name_that_does_not_say_symbol_and_timeframe_is_told_what_to_pass(tmp_path: Path) -> None:
    path = csv(tmp_path, sample_csv(), name="prices.csv")
    with pytest.raises(UnnamedDataset, match="SYMBOL_timeframe.csv"):
        DataStore(root=tmp_path / "store").import_csv(path)
    info = DataStore(root=tmp_path / "store").import_csv(path, symbol="EURUSD", timeframe="1h")
    assert info.bars == 552


def test_the_packaged_sample_imports_cleanly(tmp_path: Path) -> None:
    info = DataStore(root=tmp_path / "store").import_csv(csv(tmp_path, sample_csv()))
    assert (info.symbol, info.timeframe, info.bars) == ("EURUSD", "1h", 552)
    assert str(info.start).startswith("2024-01-01") and str(info.end).startswith("2024-01-31")
