"""Where a strategy named in a request may come from: a packaged name, a file name in the strategies
directory, or YAML text; never a path, and an unknown name says nothing about the host's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktrdr.models.training_plan import TrainingRequestError, plan_training
from ktrdr.strategy import (
    MAX_STRATEGY_BYTES,
    RuleStrategy,
    StrategyError,
    UnknownStrategyError,
    load_strategy,
    load_strategy_file,
    strategies_dir,
)
from ktrdr.strategy.loader import MAX_STRATEGY_DEPTH
from subjects.training import TrainingParams

SMA = (Path(__file__).parents[3] / "ktrdr" / "strategies" / "sma_crossover.yaml").read_text()
# A file outside the strategies directory, valid as a strategy and with a line no error may quote.
SECRET = SMA.replace("name: sma_crossover", "name: outside_secret") + "# SECRET-LINE do not quote\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    f = tmp_path / "outside.yaml"
    f.write_text(SECRET)
    return f


def _unknown(source: str) -> str:
    with pytest.raises(UnknownStrategyError) as info:
        load_strategy(source)
    message = str(info.value)
    assert "SECRET" not in message and "root:" not in message
    return message


def _generic(source: str) -> str:
    """The one message for any unknown strategy, with its name in it."""
    return (f"unknown strategy {source!r}: use a packaged name (neuro_mean_reversion, rsi_mean_reversion, "
            f"sma_crossover), a file name in {strategies_dir()}, or YAML text")


def test_the_strategies_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KTRDR_STRATEGIES_DIR", raising=False)
    monkeypatch.setenv("KTRDR_HOME", str(tmp_path / "home"))
    assert strategies_dir() == tmp_path / "home" / "strategies"
    monkeypatch.setenv("KTRDR_STRATEGIES_DIR", str(tmp_path / "mine"))
    assert strategies_dir() == tmp_path / "mine"


def test_a_file_in_the_strategies_dir_loads_by_name(sdir: Path) -> None:
    (sdir / "mine.yaml").write_text(SMA.replace("name: sma_crossover", "name: mine"))
    (sdir / "other.yml").write_text(SMA.replace("name: sma_crossover", "name: other"))
    assert load_strategy("mine").name == "mine"
    assert load_strategy("mine.yaml").source == str((sdir / "mine.yaml").resolve())
    assert load_strategy("other").name == "other" and load_strategy("other.yml").name == "other"
    # A packaged name is the packaged strategy, whatever the directory holds.
    (sdir / "sma_crossover.yaml").write_text(SMA.replace("name: sma_crossover", "name: shadow"))
    assert load_strategy("sma_crossover").name == "sma_crossover"


def test_an_error_in_a_file_of_the_strategies_dir_names_it(sdir: Path) -> None:
    (sdir / "bad.yaml").write_text("name: bad\nindicators: {}\nrules: {entry_long: {above: [close, nowhere]}}\n")
    with pytest.raises(StrategyError) as info:
        load_strategy("bad")
    assert "bad.yaml" in str(info.value) and "rules.entry_long" in str(info.value)


def test_yaml_text_loads(sdir: Path) -> None:
    assert isinstance(load_strategy(SMA), RuleStrategy)
    one_line = ("{name: x, indicators: {f: {type: sma, period: 3}}, "
                "rules: {entry_long: {above: [close, f]}, exit_long: {below: [close, f]}}}")
    assert load_strategy(one_line).name == "x"


def test_oversized_yaml_text_is_refused(sdir: Path) -> None:
    big = SMA + "#" * MAX_STRATEGY_BYTES + "\n"
    with pytest.raises(StrategyError) as info:
        load_strategy(big)
    assert f"at most {MAX_STRATEGY_BYTES}" in str(info.value)
    (sdir / "big.yaml").write_text(big)
    with pytest.raises(StrategyError, match=f"larger than {MAX_STRATEGY_BYTES} bytes"):
        load_strategy("big")


def test_yaml_nested_deeper_than_the_limit_is_refused_naming_it(sdir: Path) -> None:
    too_deep = f"nested deeper than {MAX_STRATEGY_DEPTH} levels"
    flow = "rules: " + "[" * 20_000 + "]" * 20_000
    block = "rules:\n" + "".join("  " * i + "a:\n" for i in range(1, 80))
    for text in (flow, block):
        with pytest.raises(StrategyError, match=too_deep):
            load_strategy(text)
    # Rules nest far less than that: thirty nots around a comparison load.
    rule = "{above: [close, f]}"
    for _ in range(30):
        rule = "{not: " + rule + "}"
    nested = "{name: x, indicators: {f: {type: sma, period: 3}}, rules: {entry_long: " + rule + "}}"
    assert load_strategy(nested).name == "x"


def test_an_absolute_path_is_refused_even_to_a_valid_strategy(sdir: Path, outside: Path) -> None:
    assert _unknown(str(outside)) == _generic(str(outside))
    (sdir / "mine.yaml").write_text(SMA)
    assert _unknown(str(sdir / "mine.yaml")) == _generic(str(sdir / "mine.yaml"))


@pytest.mark.parametrize("source", ["../outside", "../outside.yaml", "./outside.yaml", "strategies/../outside",
                                    "../../../../../../etc/passwd", "..", "~/outside.yaml"])
def test_a_relative_path_is_refused(sdir: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    monkeypatch.chdir(sdir)
    assert _unknown(source) == _generic(source)


def test_a_symlink_out_of_the_strategies_dir_is_refused(sdir: Path, outside: Path) -> None:
    (sdir / "escape.yaml").symlink_to(outside)
    (sdir / "passwd.yaml").symlink_to("/etc/passwd")
    (sdir / "dir.yaml").symlink_to(outside.parent, target_is_directory=True)
    for name in ("escape", "escape.yaml", "passwd", "dir"):
        assert _unknown(name) == _generic(name)
    # A link that stays inside the directory is fine.
    (sdir / "real.yaml").write_text(SMA)
    (sdir / "alias.yaml").symlink_to(sdir / "real.yaml")
    assert load_strategy("alias").name == "sma_crossover"


def test_an_existing_file_and_a_missing_one_get_the_same_message(
        sdir: Path, outside: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def same(existing: str, missing: str) -> None:
        assert _unknown(existing).replace(existing, "X") == _unknown(missing).replace(missing, "X")

    same("/etc/passwd", "/no/such/file")
    same(str(outside), str(outside.with_name("missing.yaml")))
    # A name that is a file in the working directory (and not in the strategies dir) is just unknown.
    monkeypatch.chdir(outside.parent)
    same("outside", "nowhere")
    same("outside.yaml", "nowhere.yaml")


def test_an_unknown_name_is_quoted_short(sdir: Path) -> None:
    long = "x" * 500
    message = _unknown("/" + long)
    assert long not in message and len(message) < 600
    assert _unknown("a" * 65) == _generic("a" * 65)  # longer than a name may be


def test_a_path_object_goes_to_the_trusted_file_loader(outside: Path) -> None:
    with pytest.raises(TypeError, match="load_strategy_file"):
        load_strategy(outside)  # type: ignore[arg-type]
    assert load_strategy_file(outside).name == "outside_secret"


def test_a_training_request_naming_a_path_is_refused_the_same_way(sdir: Path, outside: Path) -> None:
    with pytest.raises(TrainingRequestError) as info:
        plan_training(TrainingParams(strategy=str(outside)))
    assert info.value.field == "strategy" and info.value.message == _generic(str(outside))


def test_yaml_aliases_are_refused_before_they_can_expand() -> None:
    laughs = "name: x\na: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
             "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    with pytest.raises(StrategyError, match="aliases"):
        load_strategy(laughs)
