"""Requests as a client builds them: the strategy file read where the user is, the params checked by
their op type's own declaration before anything is sent.

The coordinator admits every submission again; checking here first turns a typo into an error at
the call (a notebook cell, a CLI exit 2) instead of a failed op.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ktrdr.client.errors import Invalid

if TYPE_CHECKING:
    from ktrdr.optypes.lookups import Lookups

__all__ = ["Invalid", "prepare", "strategy_text"]


def strategy_text(strategy: str | os.PathLike[str]) -> str:
    """The user's own strategy file is read here and travels as YAML text: the coordinator and the
    workers never read paths. A file is a path (``./my.yaml``, ``~/s/x.yaml``, a ``Path``) or a
    ``.yaml``/``.yml`` file in the current directory; anything else goes as given: a packaged name,
    a file name in the strategies directory (``KTRDR_STRATEGIES_DIR``) or YAML text."""
    if isinstance(strategy, os.PathLike):
        path = Path(strategy).expanduser()
        if not path.is_file():
            raise Invalid("strategy", f"no such file: {path}")
        return _read(path)
    if "\n" in strategy:
        return strategy
    path = Path(strategy).expanduser()
    is_path = "/" in strategy or os.sep in strategy or strategy.startswith("~")
    if path.is_file() and (is_path or path.suffix in (".yaml", ".yml")):
        return _read(path)
    if is_path and ":" not in strategy:
        raise Invalid("strategy", f"no such file: {path}")
    return strategy


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid("strategy", f"cannot read {path}: {exc}") from None


def prepare(op_type: str, fields: Mapping[str, Any] | BaseModel, *, lookups: Lookups | None = None) -> BaseModel:
    """``fields`` as ``op_type``'s params, checked as the coordinator's admission checks them (the
    strategy loads with every override, the objective names a metric...). ``None`` values are left
    out (the model's default applies); a strategy given as a file is read. Raises :class:`Invalid`.

    What the params name on the platform (a source op, stored bars) is the coordinator's to check,
    with its lookups (its refusal is an :class:`Invalid` too); given ``lookups`` (the handler
    harness's, for instance), the type's ``verify`` runs here as well. It is awaited on a loop of its
    own: call ``prepare`` in a thread from async code (``asyncio.to_thread``)."""
    # Domain imports are deferred: a client that only lists ops starts without pandas.
    from ktrdr.optypes import Rejected
    from ktrdr.optypes import op_type as declared

    try:
        declaration = declared(op_type)
    except Rejected as exc:
        raise Invalid(exc.field, exc.message) from None
    if isinstance(fields, BaseModel):
        fields = fields.model_dump(mode="json")
    given = {k: v for k, v in fields.items() if v is not None}
    where = None
    if "strategy" in given:
        text = strategy_text(given["strategy"])
        if text != given["strategy"] or isinstance(given["strategy"], os.PathLike):
            where = str(given["strategy"])  # a file, read here: its errors name it, not "<inline>"
        given["strategy"] = text
    try:
        params = _checked(declaration, given)
        return params if lookups is None else _verified(declaration, params, lookups)
    except Invalid as exc:
        if exc.field == "strategy" or exc.message.startswith("invalid strategy"):
            raise Invalid(exc.field, _named(exc.message, where)) from None
        raise


def _named(message: str, where: str | None) -> str:
    """A strategy error says which strategy once: ``x.yaml: rules: needs entry_long``, not ``invalid
    strategy <inline>:``."""
    for prefix in ("invalid strategy <inline>", "invalid strategy"):
        if message.startswith(prefix):
            rest = message[len(prefix):].lstrip()
            if prefix.endswith("<inline>"):
                return f"{where or 'the YAML text'}{rest}"
            return rest
    return message


def _checked(declaration: Any, given: dict[str, Any]) -> BaseModel:
    from ktrdr.backtest.checks import RequestProblem
    from ktrdr.optypes import Rejected

    try:
        params = declaration.parse(given)
        admit = declaration.admit
        # An admission that looks things up on the platform (a coroutine) is left to the coordinator.
        if admit is not None and not _is_coroutine(admit):
            params = admit(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise Invalid(".".join(str(p) for p in err["loc"]) or "request", str(err["msg"])) from None
    except Rejected as exc:
        raise Invalid(exc.field, exc.message) from None
    except RequestProblem as exc:
        raise Invalid(exc.field, exc.message) from None
    except ValueError as exc:
        raise Invalid("request", str(exc)) from None
    return params  # type: ignore[no-any-return]


def _verified(declaration: Any, params: BaseModel, lookups: Lookups) -> BaseModel:
    from ktrdr.optypes import Rejected

    if declaration.verify is None:
        return params
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop in this thread: the lookups are awaited on one of their own
    else:
        raise RuntimeError("prepare(..., lookups=...) awaits the lookups on a loop of its own: from async code, "
                           "call it in a thread (asyncio.to_thread)")
    try:
        verified = asyncio.run(declaration.verify(params, lookups))
    except Rejected as exc:
        raise Invalid(exc.field, exc.message) from None
    return params if verified is None else verified  # type: ignore[no-any-return]


def _is_coroutine(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)
