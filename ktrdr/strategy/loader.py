"""Loading strategies from a file, a packaged name or inline YAML, and applying parameter overrides."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ktrdr.data.validation import OHLCV
from ktrdr.strategy.conditions import check_condition
from ktrdr.strategy.errors import StrategyError
from ktrdr.strategy.schema import NeuroFuzzyStrategy, RuleStrategy, Strategy


def packaged_strategies() -> list[str]:
    root = resources.files("ktrdr") / "strategies"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _packaged_path(name: str) -> Path | None:
    stem = name[:-5] if name.endswith(".yaml") else name
    candidate = Path(str(resources.files("ktrdr") / "strategies" / f"{stem}.yaml"))
    return candidate if candidate.is_file() else None


def load_strategy(source: str | Path | Mapping[str, Any]) -> Strategy:
    """A validated strategy from a path, a packaged name (``sma_crossover``), inline YAML or a mapping."""
    if isinstance(source, Mapping):
        return parse_strategy(dict(source), source="<mapping>")
    if isinstance(source, Path):
        return _load_file(source)
    if "\n" not in source:
        if Path(source).is_file():
            return _load_file(Path(source))
        packaged = _packaged_path(source)
        if packaged is not None:
            return _load_file(packaged)
        if ":" not in source:
            raise StrategyError(source, [("", "no such file or packaged strategy; packaged: "
                                          + ", ".join(packaged_strategies()))])
    return parse_strategy(_parse_yaml(source, "<inline>"), source="<inline>")


def _load_file(path: Path) -> Strategy:
    try:
        text = path.read_text()
    except OSError as e:
        raise StrategyError(str(path), [("", f"cannot read: {e}")]) from None
    return parse_strategy(_parse_yaml(text, str(path)), source=str(path))


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StrategyError(source, [("", f"not valid YAML: {e}")]) from None
    if not isinstance(doc, dict):
        raise StrategyError(source, [("", "the document must be a mapping")])
    return doc


def parse_strategy(doc: dict[str, Any], *, source: str) -> Strategy:
    model_cls: type[RuleStrategy] | type[NeuroFuzzyStrategy]
    if "rules" in doc:
        model_cls = RuleStrategy
    elif str(doc.get("version")) == "3.0" or "fuzzy_sets" in doc:
        model_cls = NeuroFuzzyStrategy
        if "version" in doc:
            doc = {**doc, "version": str(doc["version"])}
    else:
        raise StrategyError(source, [("rules", "missing: a strategy needs rules (rule-based) or "
                                      "version \"3.0\" with fuzzy_sets and model (neuro-fuzzy)")])
    try:
        strategy = model_cls.model_validate(doc)
    except ValidationError as e:
        raise StrategyError(source, [(_loc(err["loc"]), err["msg"]) for err in e.errors()]) from None
    problems = _cross_check(strategy)
    if problems:
        raise StrategyError(source, problems)
    strategy._source = source
    strategy._document = copy.deepcopy(doc)
    return strategy


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _is_operand(strategy: Strategy, ref: str) -> bool:
    ident, _, _column = ref.partition(".")
    return ident in strategy.indicators or (ref in OHLCV)


def _cross_check(strategy: Strategy) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if isinstance(strategy, RuleStrategy):
        for name in ("entry_long", "exit_long", "entry_short", "exit_short"):
            cond = getattr(strategy.rules, name)
            if cond is not None:
                problems += check_condition(cond, f"rules.{name}", lambda r: _is_operand(strategy, r))
    else:
        for name, fs in strategy.fuzzy_sets.items():
            if not _is_operand(strategy, fs.indicator):
                problems.append((f"fuzzy_sets.{name}.indicator", f"unknown indicator {fs.indicator!r}"))
        for i, item in enumerate(strategy.nn_inputs):
            if item.fuzzy_set not in strategy.fuzzy_sets:
                problems.append((f"nn_inputs[{i}].fuzzy_set", f"unknown fuzzy set {item.fuzzy_set!r}"))
            if isinstance(item.timeframes, list):
                extra = sorted(set(item.timeframes) - set(strategy.training_data.timeframes))
                if extra:
                    problems.append((f"nn_inputs[{i}].timeframes",
                                     f"{extra} not in training_data.timeframes"))
    doc = strategy.model_dump()
    for name, param in strategy.parameters.items():
        if not _has_path(doc, param.path):
            problems.append((f"parameters.{name}.path", f"{param.path!r} does not name a field of this strategy"))
    return problems


def _has_path(doc: Any, path: str) -> bool:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False
        doc = doc[part]
    return True


def with_parameters(strategy: Strategy, overrides: Mapping[str, Any]) -> Strategy:
    """A re-validated copy with parameters set by name (as declared in ``parameters``) or dotted path."""
    doc = copy.deepcopy(strategy.document or strategy.model_dump(exclude_defaults=True))
    for name, value in overrides.items():
        if name in strategy.parameters:
            path = strategy.parameters[name].path
        elif "." in name:
            path = name
        else:
            raise StrategyError(strategy.source, [(f"parameters.{name}", "no such parameter; declared: "
                                                   + (", ".join(strategy.parameters) or "none"))])
        node = doc
        *parents, leaf = path.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise StrategyError(strategy.source, [(path, "no such field")])
            node = node[part]
        node[leaf] = value
    label = ", ".join(f"{k}={v}" for k, v in overrides.items())
    return parse_strategy(doc, source=f"{strategy.source} ({label})" if label else strategy.source)
