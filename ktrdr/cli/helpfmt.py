"""How ``--help`` names values: by their metavar (``N``, ``DATE``, ``FRACTION``), never by a Python type.

Newer typer (0.2x, its own copy of click) prints each option's Python type beside it (``<bool>``
beside a flag that takes no value, ``<list[str]>``, ``<str>`` beside an argument already named by
its metavar) and writes arguments four ways in the usage line. Every ktrdr option and argument has
a metavar of its own (``tests/ktrdr/cli/test_help.py`` checks that), so :func:`plain_metavars` makes
typer print just that: nothing beside a flag, arguments as click writes them (``OP_ID``,
``[OUTPUT]``, ``OP_ID...``). Older typer (click's own help) prints metavars already; there this does
nothing.
"""

from __future__ import annotations

from typing import Any


def plain_metavars() -> None:
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # pragma: no cover - a typer without these classes prints click's help
        return
    if getattr(TyperOption, "_ktrdr_plain_metavars", False):
        return
    option_type = getattr(TyperOption, "display_type_rich", None)
    if option_type is not None:
        def display_option_type(self: Any, ctx: Any) -> str | None:
            if getattr(self, "is_flag", False) and not getattr(self, "count", False):
                return None  # a flag takes no value: nothing to name
            return option_type(self, ctx)  # type: ignore[no-any-return]

        TyperOption.display_type_rich = display_option_type  # type: ignore[method-assign]
    if hasattr(TyperArgument, "display_type_rich"):
        def display_argument_type(self: Any, ctx: Any) -> str | None:
            return None  # the argument's metavar, in the name column, says what it is

        TyperArgument.display_type_rich = display_argument_type  # type: ignore[method-assign]
    if hasattr(TyperArgument, "_usage_display_name") and hasattr(TyperArgument, "display_name_raw"):
        def usage_name(self: Any) -> str:
            name = self.display_name_raw
            if self.nargs != 1:
                name += "..."
            return name if self.required else f"[{name}]"

        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    TyperOption._ktrdr_plain_metavars = True  # type: ignore[attr-defined]
