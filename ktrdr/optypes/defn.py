"""What an operation type is: one declaration, read by every part of the platform.

A declaration names the type, its parameter and result models, where it runs (a capability route, in
order of preference, or the coordinator itself for a parent operation made of children), the checks a
submission passes before anything is queued (``admit``: the params alone; ``verify``: against the
platform, with read-only lookups), how the API and CLI expose it and how its result is shown
(``headline``, ``view``). The coordinator's admission, dispatch, API and dashboard, the worker
runtime's handler registration and the CLI's ``ops types`` all read it, so the type's name is
spelled once, here.

Declarations live in the modules of this package, one per type, and are found by importing them all
(:func:`op_types`): adding a type adds a module, it edits no table.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ktrdr.errors import FieldError
from subjects import names

if TYPE_CHECKING:
    from ktrdr.optypes.parent import ParentPlan
    from ktrdr.optypes.readonly import Lookups
    from ktrdr.optypes.views import View
    from ktrdr.runtime.retry import RetryPolicy

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


# A submission refused by its type's admission check; ``field`` names the part at fault
# (``strategy``, ``grid.slow``...). The API and the NATS service answer it as a 422.
Rejected = FieldError


class UnknownOpType(Rejected):
    def __init__(self, name: str) -> None:
        super().__init__("type", f"unknown operation type {name!r}; known: {', '.join(type_names())}")


@dataclass(frozen=True)
class Route:
    """Where an operation's jobs go: capabilities in order of preference.

    The dispatcher offers an attempt on the first capability that a live worker holds, or on the
    last one when none does; an offer on any but the last is also made on the rest once
    ``gpu_fallback_timeout_s`` passes without a claim (GPU first, CPU after a timeout). An empty
    route is the coordinator's: the type is a parent operation and no worker ever sees it.
    """

    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for capability in self.capabilities:
            names.validate_capability(capability)

    @property
    def on_coordinator(self) -> bool:
        return not self.capabilities

    @property
    def fallback(self) -> str:
        return self.capabilities[-1]


def on(*capabilities: str) -> Route:
    """A worker route: ``on(CAP_TRAINING_GPU, CAP_TRAINING_CPU)`` prefers GPUs, falls back to CPUs."""
    if not capabilities:
        raise ValueError("a worker route needs at least one capability")
    return Route(tuple(capabilities))


ON_COORDINATOR = Route(())

Admit = Callable[[P], "P | Awaitable[P]"]  # a coroutine function, or a plain one run in a thread
# A coroutine function: the params (as ``admit`` left them) checked against the platform; may
# return them completed (None: unchanged).
Verify = Callable[[P, "Lookups"], Awaitable["P | None"]]


@dataclass(frozen=True, kw_only=True, eq=False)  # one object per type: compared and hashed by identity
class OpType(Generic[P, R]):
    """One operation type. ``admit`` may complete the params (training writes the symbol its
    strategy implies) or raise :class:`Rejected`; a plain function runs in a thread (loading a
    strategy is CPU work). It reads nothing but the params, so the client runs it too, before
    anything connects. ``verify`` then checks them against the platform through read-only
    :class:`~ktrdr.optypes.lookups.Lookups` (the op a param names exists and completed, the bars it
    needs are stored), in the coordinator, before anything is queued. ``parent`` is the plan of a
    coordinator-run type (``ktrdr.optypes.parent``)."""

    name: str
    params: type[P]
    result: type[R] | None = None
    runs: Route
    summary: str
    admit: Admit[P] | None = None
    verify: Verify[P] | None = None
    parent: ParentPlan[P] | None = None
    api: str | None = None  # POST path of the API route that takes the bare params
    cli: str | None = None  # the CLI command that submits it (shown by `ktrdr ops types`)
    # The outcome's key figures in one line (`--follow`'s summary), from the record's result.
    headline: Callable[[dict[str, Any]], str] | None = None
    # Its result page (dashboard) and, without a headline, its summary line: ``view(result, document)``
    # from the result (as ``result``'s model) and the document it stored (None: none, or not read).
    view: Callable[[Any, bytes | None], View] | None = None
    # How a retryable handler failure (ktrdr.errors) is retried: ``attempts`` in all at most (and never
    # past the op's ``max_attempts``), after ``delay(n)`` before the n-th retry. None: never.
    retry: RetryPolicy | None = None

    def __post_init__(self) -> None:
        names.validate_token(self.name, what="operation type")
        if self.runs.on_coordinator != (self.parent is not None):
            raise ValueError(f"{self.name}: a coordinator-run type needs a parent plan, and only it has one")
        if self.verify is not None and not inspect.iscoroutinefunction(self.verify):
            raise ValueError(f"{self.name}: verify is a coroutine function (its lookups are awaited)")

    @property
    def on_coordinator(self) -> bool:
        return self.runs.on_coordinator

    def parse(self, params: dict[str, Any] | BaseModel) -> P:
        """The params as their model (pydantic's ValidationError names the field at fault)."""
        if isinstance(params, self.params):
            return params
        if isinstance(params, BaseModel):
            params = params.model_dump(mode="json")
        return self.params.model_validate(params)

    def dump(self, params: P) -> dict[str, Any]:
        return params.model_dump(mode="json")

    async def admitted(self, params: P, lookups: Lookups | None = None) -> P:
        """``admit``, then ``verify`` against ``lookups`` (skipped without: the client's offline check)."""
        if self.admit is not None:
            if inspect.iscoroutinefunction(self.admit):
                params = await self.admit(params)
            else:
                params = await asyncio.to_thread(self.admit, params)  # type: ignore[arg-type]
        if self.verify is not None and lookups is not None:
            verified = await self.verify(params, lookups)
            params = params if verified is None else verified
        return params

    def result_dict(self, result: Any) -> dict[str, Any] | None:
        """A handler's return value as the JSON the op record keeps: its result model dumped, or a
        dict kept as it is (a stand-in in a test, or a handler with nothing typed to say)."""
        if result is None:
            return None
        if isinstance(result, BaseModel):
            return result.model_dump(mode="json")
        if isinstance(result, dict):
            return result
        raise TypeError(f"{self.name}: a handler returns its result model or a dict, not {type(result).__name__}")

    def describe_result(self, result: dict[str, Any]) -> str | None:
        """``headline``'s line (else the figures of ``view`` without a document), or None when the
        type has neither or its result lacks what they read."""
        try:
            if self.headline is not None:
                return self.headline(result)
            if self.view is not None:
                return self.view(self.parse_result(result) or result, None).line() or None
        except (KeyError, TypeError, ValueError, AttributeError, LookupError):
            return None  # a result from an older or newer worker: the caller falls back to its fields
        return None

    def view_of(self, result: dict[str, Any] | None, document: bytes | None) -> View | None:
        """The declared view of a completed op's result, cut to a page's size; None without one."""
        if self.view is None:
            return None
        return self.view(self.parse_result(result) or result, document).bounded()

    def parse_result(self, result: dict[str, Any] | None) -> R | None:
        if result is None or self.result is None:
            return None
        return self.result.model_validate(result)


_TYPES: dict[str, OpType[Any, Any]] = {}
_lock = threading.Lock()
_discovered = False
# Modules of this package that hold no declaration.
_NOT_DECLARATIONS = frozenset({"defn", "parent", "lookups", "views", "headlines"})


def declare(op_type: OpType[P, R]) -> OpType[P, R]:
    """Register ``op_type``; a module declares ``BACKTEST = declare(OpType(...))``."""
    existing = _TYPES.get(op_type.name)
    if existing is not None and existing is not op_type:
        raise ValueError(f"operation type {op_type.name!r} declared twice")
    _TYPES[op_type.name] = op_type
    return op_type


def retract(op_type: OpType[Any, Any]) -> None:
    """Undo :func:`declare` (a type declared by a test, for the test's duration)."""
    if _TYPES.get(op_type.name) is op_type:
        del _TYPES[op_type.name]


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    with _lock:
        if _discovered:
            return
        import ktrdr.optypes as package

        for module in pkgutil.iter_modules(package.__path__):
            if module.name not in _NOT_DECLARATIONS and not module.name.startswith("_"):
                importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True


def op_types() -> tuple[OpType[Any, Any], ...]:
    _discover()
    return tuple(_TYPES.values())


def types_on(capability: str) -> tuple[OpType[Any, Any], ...]:
    """The types whose route includes ``capability`` (what a worker serving it must handle)."""
    return tuple(t for t in op_types() if capability in t.runs.capabilities)


def type_names() -> tuple[str, ...]:
    return tuple(t.name for t in op_types())


def op_type(name: str) -> OpType[Any, Any]:
    """The declaration of ``name``; :class:`UnknownOpType` (a 422 on ``type``) when there is none."""
    _discover()
    found = _TYPES.get(name)
    if found is None:
        raise UnknownOpType(name)
    return found
