"""A client reads a strategy file on the user's machine and sends its text (servers never read paths),
and checks a request as the coordinator's admission would before sending it."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktrdr.client.requests import Invalid, prepare, strategy_text
from ktrdr.strategy import load_strategy

BASE = {"strategy": "sma_crossover", "symbol": "SYN", "timeframe": "1h"}
SMA = (Path(__file__).parents[3] / "ktrdr" / "strategies" / "sma_crossover.yaml").read_text()


def test_a_local_file_travels_as_its_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my.yaml").write_text(SMA)
    (tmp_path / "nosuffix").write_text(SMA)
    monkeypatch.chdir(tmp_path)
    for given in ("./my.yaml", "my.yaml", str(tmp_path / "my.yaml"), "./nosuffix", tmp_path / "nosuffix"):
        text = strategy_text(given)
        assert text == SMA and load_strategy(text).name == "sma_crossover"


def test_names_and_yaml_text_go_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nosuffix").write_text(SMA)  # a bare name stays a name, even if such a file is here
    for given in ("sma_crossover", "mine.yaml", "nosuffix", SMA, "{name: x, rules: {}}"):
        assert strategy_text(given) == given


def test_a_missing_local_path_is_an_error_here(tmp_path: Path) -> None:
    for given in (str(tmp_path / "missing.yaml"), tmp_path / "missing.yaml"):
        with pytest.raises(Invalid, match="no such file") as refused:
            strategy_text(given)
        assert refused.value.field == "strategy" and refused.value.code == 422


def test_a_request_is_checked_by_its_op_type_and_names_the_field_at_fault(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(SMA)
    params = prepare("backtesting", {**BASE, "strategy": tmp_path / "mine.yaml", "start": None})
    assert params.strategy == SMA and params.symbol == "SYN"  # None left out: the model's default applies

    cases = [
        ("backtesting", {**BASE, "strategy": "no_such_strategy"}, "strategy"),
        ("backtesting", {**BASE, "parameters": {"fast": "x"}}, "parameters"),
        ("backtesting", {**BASE, "capital": -1}, "capital"),
        ("sweep", {**BASE, "grid": {"fast": [5, 10]},
                   "objective": {"metric": "sharpe"}}, "objective"),
        ("sweep", {**BASE, "grid": {"fast": [5, 10]},
                   "objective": {"metric": "sharpe_ratio", "require": ["fast < nope"]}}, "objective"),
        ("no_such_type", {}, "type"),
    ]
    for op_type, fields, field in cases:
        with pytest.raises(Invalid) as refused:
            prepare(op_type, fields)
        assert refused.value.field.startswith(field), (op_type, fields, refused.value)
        assert str(refused.value).startswith(f"invalid {refused.value.field}: ")
    with pytest.raises(Invalid, match="sharpe_ratio"):  # the valid names are listed
        prepare("sweep", {**BASE, "grid": {"fast": [5, 10]},
                          "objective": {"metric": "sharpe"}})


def test_a_strategy_file_that_does_not_load_is_named_in_the_error_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrules: {}\n")
    for given, named in ((str(bad), str(bad)), (bad, str(bad)), (bad.read_text(), "the YAML text")):
        with pytest.raises(Invalid) as refused:
            prepare("backtesting", {**BASE, "strategy": given})
        assert refused.value.field == "strategy"
        assert refused.value.message.startswith(f"{named}:") and "<inline>" not in refused.value.message
        assert str(refused.value).count("invalid strategy") == 1
