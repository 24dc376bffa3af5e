"""Loading strategies, and applying parameter overrides.

A strategy named in a request (:func:`load_strategy` with a string) is exactly one of:

- a packaged name (``sma_crossover``, from ``ktrdr/strategies/*.yaml``);
- the name of a file in the strategies directory (:func:`strategies_dir`): ``[A-Za-z0-9_-]{1,64}``,
  optionally with ``.yaml``/``.yml``, which must still lie inside that directory once symlinks are
  resolved;
- YAML text (it contains a newline or a ``:``), at most :data:`MAX_STRATEGY_BYTES`.

Never a path: a request reaches the coordinator and then a worker on another host, and reading what
it names would read (and quote in errors) any file there. Anything else is refused with one message,
whether or not a file of that name exists anywhere. A local file (the CLI reads the user's own
file and sends its text; tests) is read by :func:`load_strategy_file`, which trusts its caller.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

import yaml
from pydantic import ValidationError

from ktrdr.data.validation import OHLCV
from ktrdr.strategy.conditions import check_condition
from ktrdr.strategy.errors import StrategyError, UnknownStrategyError
from ktrdr.strategy.schema import NeuroFuzzyStrategy, RuleStrategy, Strategy
from subjects.limits import MAX_JSON_DEPTH

MAX_STRATEGY_BYTES = 64 * 1024
# How deeply a strategy's mappings and lists may nest: composing recurses once per level, so 20,000
# levels of ``[`` in 40 KB exhaust Python's recursion. Real strategies nest under 15 (rules of all,
# any and not); the same bound as JSON payloads (subjects.limits.MAX_JSON_DEPTH).
MAX_STRATEGY_DEPTH = MAX_JSON_DEPTH
_NAME = re.compile(r"([A-Za-z0-9_-]{1,64})(\.ya?ml)?")


def strategies_dir() -> Path:
    """Where strategies named by file name live: ``KTRDR_STRATEGIES_DIR``, else ``$KTRDR_HOME/strategies``
    (``~/.ktrdr/strategies``)."""
    configured = os.environ.get("KTRDR_STRATEGIES_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("KTRDR_HOME") or Path.home() / ".ktrdr").expanduser() / "strategies"


def packaged_strategies() -> list[str]:
    root = resources.files("ktrdr") / "strategies"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _packaged_path(stem: str) -> Path | None:
    if stem not in packaged_strategies():
        return None
    candidate = Path(str(resources.files("ktrdr") / "strategies" / f"{stem}.yaml"))
    return candidate if candidate.is_file() else None


def _dir_path(stem: str, suffix: str | None) -> Path | None:
    """The file ``stem[.suffix]`` of the strategies directory, symlinks resolved, if it lies inside it."""
    try:
        root = strategies_dir().resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    for name in [stem + suffix] if suffix else [f"{stem}.yaml", f"{stem}.yml"]:
        try:
            real = (root / name).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(root) and real.is_file():
            return real
    return None


def _unknown(source: str) -> UnknownStrategyError:
    shown = source if len(source) <= 200 else source[:197] + "..."
    return UnknownStrategyError(shown, f"unknown strategy {shown!r}: use a packaged name ("
                                + ", ".join(packaged_strategies()) + f"), a file name in {strategies_dir()}, "
                                "or YAML text")


def load_strategy(source: str | Mapping[str, Any]) -> Strategy:
    """A validated strategy from a packaged name (``sma_crossover``), a file name in the strategies
    directory, YAML text or a mapping; never from a path (see the module's docstring)."""
    if isinstance(source, Mapping):
        return parse_strategy(dict(source), source="<mapping>")
    if isinstance(source, PurePath) or not isinstance(source, str):
        raise TypeError("load_strategy takes a name, YAML text or a mapping; a local file: load_strategy_file")
    match = _NAME.fullmatch(source.strip())
    if match:
        stem, suffix = match.group(1), match.group(2)
        packaged = _packaged_path(stem) if suffix in (None, ".yaml") else None
        if packaged is not None:
            return load_strategy_file(packaged)
        found = _dir_path(stem, suffix)
        if found is None:
            raise _unknown(source)
        return _load_bounded(found)
    if "\n" not in source and ":" not in source:
        raise _unknown(source)
    size = len(source.encode())
    if size > MAX_STRATEGY_BYTES:
        raise StrategyError("<inline>", [("", f"YAML text of {size} bytes: at most {MAX_STRATEGY_BYTES}")])
    return parse_strategy(_parse_yaml(source, "<inline>"), source="<inline>")


def load_strategy_file(path: str | PurePath) -> Strategy:
    """A validated strategy from a local file the caller trusts (the CLI's user's own file, tests)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise StrategyError(str(path), [("", f"cannot read: {e}")]) from None
    return parse_strategy(_parse_yaml(text, str(path)), source=str(path))


def _load_bounded(path: Path) -> Strategy:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STRATEGY_BYTES + 1)
    except OSError as e:
        raise StrategyError(str(path), [("", f"cannot read: {e.strerror}")]) from None
    if len(data) > MAX_STRATEGY_BYTES:
        raise StrategyError(str(path), [("", f"larger than {MAX_STRATEGY_BYTES} bytes")])
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise StrategyError(str(path), [("", "not UTF-8 text")]) from None
    return parse_strategy(_parse_yaml(text, str(path)), source=str(path))


class _NoAliasLoader(yaml.SafeLoader):
    """YAML aliases let a few hundred bytes expand into billions of nodes ("billion laughs") once
    validation walks them; a strategy never needs one. Nor more than MAX_STRATEGY_DEPTH levels."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a strategy",
                                              event.start_mark)
        if self._depth >= MAX_STRATEGY_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_STRATEGY_DEPTH} levels",
                                              self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader without aliases
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
