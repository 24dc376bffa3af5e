"""``ktrdr strategies list|show``: the strategies a backtest, sweep or training can name.

What this machine sees: the packaged ones and the files in its strategies directory
(``KTRDR_STRATEGIES_DIR``, default ``$KTRDR_HOME/strategies``). The coordinator and the workers
read their own directory, so a file listed here from a directory only this machine has is sent as
text by ``ktrdr backtest run ./file.yaml``, not by name.
"""

from __future__ import annotations

import json as jsonlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ktrdr.cli.common import JsonOpt, WideOpt
from ktrdr.cli.render import Col, FitTable, console, fail, short_value

if TYPE_CHECKING:
    from ktrdr.strategy.schema import RuleStrategy

strategies_app = typer.Typer(help="Strategies, the packaged ones and those in the strategies directory: list, "
                                  "show.\n\nExample: ktrdr strategies show sma_crossover", no_args_is_help=True)

KINDS = {"rules": "rule-based", "neuro_fuzzy": "neuro-fuzzy"}


def _value_at(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _describe(name: str, where: str, path: Path) -> dict[str, Any]:
    """One strategy as listed; a file that does not load is listed with its error, not skipped."""
    from ktrdr.strategy.loader import load_strategy_file

    try:
        strategy = load_strategy_file(path)
    except (ValueError, OSError) as exc:
        return {"name": name, "where": where, "kind": None, "description": "", "parameters": {},
                "error": str(exc).splitlines()[0], "file": str(path)}
    return {"name": name, "where": where, "kind": KINDS.get(strategy.kind, strategy.kind),
            "description": strategy.description,
            "parameters": {k: _value_at(strategy.document, p.path) for k, p in strategy.parameters.items()},
            "error": None, "file": str(path)}


def _found() -> list[dict[str, Any]]:
    from importlib import resources

    from ktrdr.strategy.loader import packaged_strategies, strategies_dir

    out = []
    packaged = packaged_strategies()
    for name in packaged:
        out.append(_describe(name, "packaged", Path(str(resources.files("ktrdr") / "strategies" / f"{name}.yaml"))))
    folder = strategies_dir()
    if folder.is_dir():
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            # A packaged name comes first when a request names it: the file is shadowed.
            where = f"{folder} (shadowed by the packaged one)" if path.stem in packaged else str(folder)
            out.append(_describe(path.stem, where, path))
    return out


@strategies_app.command("list")
def list_(json: JsonOpt = False, wide: WideOpt = False) -> None:
    """The strategies a request can name: kind, the parameters a sweep may vary, description.

    Example: ktrdr strategies list"""
    found = _found()
    if json:
        print(jsonlib.dumps(found, indent=2, default=str))
        return
    console.print(strategies_table(found, wide=wide))


def strategies_table(found: list[dict[str, Any]], *, wide: bool = False) -> FitTable:
    # Names and name=value pairs are what a user types next: never cut; the description folds at its
    # words and, with where a strategy comes from, gives way on a narrow terminal.
    table = FitTable(Col("name"), Col("kind", drop=2), Col("parameters", drop=1), Col("description", drop=3, wrap=True),
                     Col("from", drop=4, wrap=True),
                     title=f"{len(found)} strateg{'y' if len(found) == 1 else 'ies'}",
                     caption="parameters: what --set and a sweep's --param may vary, at their defaults", wide=wide)
    for s in found:
        params = "\n".join(f"{k}={short_value(v)}" for k, v in s["parameters"].items()) or "-"
        about = escape(" ".join(s["description"].split()) or "-") if s["error"] is None else \
            f"[red]invalid:[/] {escape(s['error'])}"
        table.add_row(escape(s["name"]), s["kind"] or "-", Text(params), about, escape(s["where"]))
    return table


@strategies_app.command("show")
def show(
    name: Annotated[str, typer.Argument(metavar="STRATEGY", help="A packaged name, a name in the strategies "
                                                                 "directory, or a local YAML file.")],
    json: JsonOpt = False,
) -> None:
    """One strategy: kind, indicators, rules or model, parameters, and its YAML.

    Example: ktrdr strategies show sma_crossover"""
    from ktrdr.strategy.loader import load_strategy, load_strategy_file

    path = Path(name).expanduser()
    try:
        # As `backtest run` reads it: a path, or a .yaml/.yml file here; anything else is a name.
        is_file = path.is_file() and ("/" in name or name.startswith("~") or path.suffix in (".yaml", ".yml"))
        strategy = load_strategy_file(path) if is_file else load_strategy(name)
    except (ValueError, TypeError) as exc:
        fail(exc)
    source = Path(strategy.source)
    text = source.read_text() if source.is_file() else None
    params = {k: {"value": _value_at(strategy.document, p.path), "path": p.path, "description": p.description}
              for k, p in strategy.parameters.items()}
    if json:
        print(jsonlib.dumps({"name": strategy.name, "kind": KINDS.get(strategy.kind, strategy.kind),
                             "description": strategy.description, "file": str(source) if text else None,
                             "parameters": params, "indicators": strategy.indicator_specs(), "yaml": text},
                            indent=2, default=str))
        return
    console.print(f"[bold]{escape(strategy.name)}[/] ({KINDS.get(strategy.kind, strategy.kind)}): "
                  f"{escape(strategy.description or '-')}", soft_wrap=True)
    if text:
        console.print(f"file: {escape(str(source))}", soft_wrap=True)
    indicators = Table(title="indicators")
    for col in ("name", "spec"):
        indicators.add_column(col, overflow="fold")
    for key, spec in strategy.indicator_specs().items():
        indicators.add_row(key, escape(" ".join(f"{k}={short_value(v)}" for k, v in spec.items())))
    console.print(indicators)
    if strategy.kind == "rules":
        console.print(_rules_table(strategy))  # type: ignore[arg-type]
    if params:
        # Text, not markup: rich would read ":b:" in "a:b:step" as an emoji code.
        table = Table(title=Text("parameters (--set name=value; a sweep's --param name=start:stop:step)"))
        for col in ("name", "value", "path", "description"):
            table.add_column(col, overflow="fold")
        for key, p in params.items():
            table.add_row(key, short_value(p["value"]), p["path"], escape(p["description"] or ""))
        console.print(table)


def _rules_table(strategy: RuleStrategy) -> Table:
    table = Table(title="rules" + (" (shorts allowed)" if strategy.allow_short else ""))
    for col in ("rule", "condition"):
        table.add_column(col, overflow="fold")
    for rule, condition in strategy.rules.model_dump(exclude_none=True).items():
        table.add_row(rule, escape(jsonlib.dumps(condition)))
    return table
