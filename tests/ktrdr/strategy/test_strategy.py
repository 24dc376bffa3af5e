from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.strategy import (
    NeuroFuzzyStrategy,
    RuleStrategy,
    StrategyError,
    generate_signals,
    load_strategy,
    load_strategy_file,
    packaged_strategies,
    parse_strategy,
    target_positions,
    with_parameters,
)
from ktrdr.strategy.signals import Signals


def test_packaged_strategies_load() -> None:
    assert {"sma_crossover", "rsi_mean_reversion", "neuro_mean_reversion"} <= set(packaged_strategies())
    assert isinstance(load_strategy("sma_crossover"), RuleStrategy)
    assert load_strategy("rsi_mean_reversion").allow_short
    nf = load_strategy("neuro_mean_reversion.yaml")
    assert isinstance(nf, NeuroFuzzyStrategy)
    assert nf.training.labels.source == "zigzag" and nf.model.architecture.hidden_layers == [32, 16]
    assert nf.fuzzy_sets["rsi_momentum"].members["oversold"] == [0, 25, 40]


def test_the_first_ktrdrs_training_keys_are_read_and_a_misspelt_one_is_refused() -> None:
    doc = copy.deepcopy(load_strategy("neuro_mean_reversion").document)
    del doc["training"]
    doc["model"]["training"] = {"learning_rate": 0.01, "batch_size": 64, "epochs": 7, "optimizer": "adam"}
    doc["training"] = {"method": "supervised", "epochs": 9,
                       "labels": {"source": "zigzag", "zigzag_threshold": 0.03, "label_lookahead": 12},
                       "data_split": {"train": 0.6, "validation": 0.2, "test": 0.2}}
    training = parse_strategy(doc, source="first").training
    assert (training.learning_rate, training.batch_size, training.epochs) == (0.01, 64, 9)  # training wins
    assert (training.labels.threshold, training.labels.lookahead) == (0.03, 12)
    assert (training.split.train, training.split.validation) == (0.6, 0.2)
    doc["training"]["learning_rat"] = 0.1
    with pytest.raises(StrategyError) as refused:
        parse_strategy(doc, source="first")
    assert refused.value.fields == ["training.learning_rat"]


def test_load_from_path_and_inline(tmp_path: Path) -> None:
    text = Path(load_strategy("sma_crossover").source).read_text()
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    assert load_strategy_file(f).source == str(f)
    assert load_strategy_file(str(f)).name == "sma_crossover"
    assert load_strategy(text).source == "<inline>"


def _error(source: str | Path) -> StrategyError:
    with pytest.raises(StrategyError) as info:
        load_strategy_file(source) if isinstance(source, Path) else load_strategy(source)
    return info.value


def test_errors_name_field_and_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("""
name: bad
indicators:
  fast: {type: sma, period: 10}
  slow: {type: sma, periood: 20}
rules:
  entry_long: {cross_above: [fast, slowest]}
  exit_long: {crosses: [fast, slow]}
""")
    e = _error(f)
    assert str(f) in str(e)
    assert "indicators.slow" in e.fields and "periood" in str(e)

    f.write_text("""
name: bad
indicators: {fast: {type: sma, period: 10}, slow: {type: sma, period: 20}}
rules:
  entry_long: {cross_above: [fast, slowest]}
  exit_long: {crosses: [fast, slow]}
allow_shrt: true
""")
    e = _error(f)
    assert "allow_shrt" in e.fields
    f.write_text(f.read_text().replace("allow_shrt: true\n", ""))
    e = _error(f)
    assert "rules.entry_long.cross_above[1]" in e.fields and "slowest" in str(e)
    assert "rules.exit_long.crosses" in e.fields and str(f) in str(e)


def test_neuro_fuzzy_errors(tmp_path: Path) -> None:
    text = Path(load_strategy("neuro_mean_reversion").source).read_text()
    f = tmp_path / "nf.yaml"
    f.write_text(text.replace("dropout: 0.2", "dropout: 1.5").replace("oversold: [0, 25, 40]", "oversold: [40, 25, 0]")
                 .replace("source: zigzag", "source: tea_leaves"))
    e = _error(f)
    assert str(f) in str(e)
    assert "model.architecture.dropout" in e.fields
    assert "fuzzy_sets.rsi_momentum" in e.fields and "oversold" in str(e)
    assert "training.labels.source" in e.fields
    f.write_text(text.replace("timeframes: [1h]\n  history", "timeframes: [2h]\n  history"))
    e = _error(f)
    assert "training_data.timeframes" in e.fields
    f.write_text(text.replace("indicator: rsi_14", "indicator: rsi_99"))
    e = _error(f)
    assert "fuzzy_sets.rsi_momentum.indicator" in e.fields


def test_missing_source_and_bad_yaml() -> None:
    assert "packaged" in str(_error("no_such_strategy"))
    assert "rules" in _error("name: x\nindicators: {}\n").fields
    assert "not valid YAML" in str(_error("name: [unclosed\nrules: x\n"))


def test_parameters_override_by_name_and_validate() -> None:
    s = load_strategy("sma_crossover")
    assert set(s.parameters) == {"fast", "slow"}
    t = with_parameters(s, {"fast": 5, "slow": 50})
    assert t.indicators["fast"].spec()["period"] == 5 and t.indicators["slow"].spec()["period"] == 50
    assert s.indicators["fast"].spec()["period"] == 10  # original untouched
    assert "fast=5" in t.source
    with pytest.raises(StrategyError, match="no such parameter"):
        with_parameters(s, {"fastest": 3})
    with pytest.raises(StrategyError) as info:
        with_parameters(s, {"fast": 0})
    assert "indicators.fast" in info.value.fields
    assert with_parameters(s, {"indicators.slow.period": 30}).indicators["slow"].spec()["period"] == 30
    e = _error("name: x\nindicators: {f: {type: sma}}\nrules: {entry_long: {above: [close, f]}}\n"
               "parameters: {p: indicators.g.period}\n")
    assert "parameters.p.path" in e.fields


def _bars(close: list[float]) -> pd.DataFrame:
    idx = pd.date_range("2021-01-01", periods=len(close), freq="h", tz="UTC")
    c = np.asarray(close, dtype=float)
    return pd.DataFrame({"open": c, "high": c, "low": c, "close": c, "volume": np.ones(len(c))}, index=idx)


def test_crossover_is_strict_on_both_sides() -> None:
    s = load_strategy("name: x\nindicators: {}\nrules: {entry_long: {cross_above: [close, 10]}, "
                      "exit_long: {cross_below: [close, 10]}}\n")
    sig = generate_signals(s, _bars([9, 10, 11, 12, 10, 9, 11, 8]))
    # 9 -> 10 -> 11: touching 10 is no cross, and 10 -> 11 starts from equality: no cross either.
    assert sig.entry_long.tolist() == [False, False, False, False, False, False, True, False]
    assert sig.exit_long.tolist() == [False] * 7 + [True]
    sig = generate_signals(s, _bars([9, 11, 9]))
    assert sig.entry_long.tolist() == [False, True, False] and sig.exit_long.tolist() == [False, False, True]


def test_combinators_and_columns() -> None:
    s = load_strategy("""
name: x
indicators: {bb: {type: bollinger, period: 3, std: 0.5}, fast: {type: sma, period: 2}}
rules:
  entry_long: {all: [{below: [close, bb.lower]}, {not: {above: [fast, 100]}}]}
  exit_long: {any: [{above: [close, bb.middle]}, {above: [close, 1000]}]}
""")
    sig = generate_signals(s, _bars([10, 10, 10, 5, 10, 10]))
    assert sig.entry_long.tolist() == [False, False, False, True, False, False]
    assert sig.exit_long.tolist() == [False, False, False, False, True, True]


def test_target_positions_walk() -> None:
    f = [False] * 8

    def arr(*on: int) -> np.ndarray:
        a = np.array(f)
        a[list(on)] = True
        return a

    sig = Signals(entry_long=arr(1, 6), exit_long=arr(3, 4), entry_short=arr(4, 6), exit_short=arr(5))
    # bar1 long; bar3 exit -> flat; bar4 short (exit_long ignored: flat); bar5 exit short; bar6 both entries: ignored.
    assert target_positions(sig).tolist() == [0, 1, 1, 0, -1, 0, 0, 0]
    sig = Signals(entry_long=arr(1), exit_long=arr(), entry_short=arr(3), exit_short=arr())
    assert target_positions(sig).tolist() == [0, 1, 1, -1, -1, -1, -1, -1]  # entries reverse


def test_short_rules_need_allow_short() -> None:
    e = _error("name: x\nindicators: {r: {type: rsi}}\nrules: {entry_long: {cross_above: [r, 30]}, "
               "entry_short: {cross_below: [r, 70]}}\n")
    assert "allow_short" in str(e)
