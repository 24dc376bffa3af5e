"""The CLI reads a strategy file on the user's machine and sends its text: servers never read paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from ktrdr.cli.common import strategy_source
from ktrdr.strategy import load_strategy

SMA = (Path(__file__).parents[3] / "ktrdr" / "strategies" / "sma_crossover.yaml").read_text()


def test_a_local_file_travels_as_its_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my.yaml").write_text(SMA)
    (tmp_path / "nosuffix").write_text(SMA)
    monkeypatch.chdir(tmp_path)
    for given in ("./my.yaml", "my.yaml", str(tmp_path / "my.yaml"), "./nosuffix"):
        text = strategy_source(given)
        assert text == SMA and load_strategy(text).name == "sma_crossover"


def test_names_and_yaml_text_go_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nosuffix").write_text(SMA)  # a bare name stays a name, even if such a file is here
    for given in ("sma_crossover", "mine.yaml", "nosuffix", SMA, "{name: x, rules: {}}"):
        assert strategy_source(given) == given


def test_a_missing_local_path_is_an_error_here(tmp_path: Path) -> None:
    with pytest.raises(typer.BadParameter, match="no such file"):
        strategy_source(str(tmp_path / "missing.yaml"))
