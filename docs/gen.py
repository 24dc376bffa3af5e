"""The generated parts of the docs, made from the code they describe.

    python docs/gen.py          # rewrite them
    python docs/gen.py --check  # exit 1, naming each stale file (tests/docs/test_generated.py does this)

Each part sits between ``<!-- generated: NAME -->`` and ``<!-- end generated -->`` in its page, so the
prose around it is written by hand and kept: the configuration table from the settings classes
(docs/operating/configuration.md), the CLI from typer's command tree (docs/reference/cli.md), the
status API's routes and the operation types' params from Starlette's routes and the type
declarations (docs/reference/api.md).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args, get_origin

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the project's packages by path

END = "<!-- end generated -->"


# --- configuration: the settings classes -----------------------------------------------------------

def _settings_classes() -> list[tuple[type, str]]:
    from coordinator.settings import CoordinatorSettings
    from host_ib.settings import IbSettings
    from ktrdr.client.settings import ClientSettings
    from ktrdr.runtime.settings import WorkerSettings
    from ktrdr.settings import CommonSettings

    return [(CommonSettings, "all"), (ClientSettings, "CLI"), (WorkerSettings, "workers"), (IbSettings, "IB host"),
            (CoordinatorSettings, "coordinator")]


# What a field's code comment leaves out (or a field with none): the user's side of it.
NOTES = {
    "nats_url": "`ktrdr up`: its embedded server. Unset, the CLI and workers take the context's; a comma list "
                "names a cluster.",
    "home": "Credentials, TLS files, contexts, the data store, logs.",
    "log_level": "Every process's log level.",
    "nats_creds": "Default: `$KTRDR_HOME/auth/<role>.nk` if present (the process's role).",
    "nats_ca": "Default: `$KTRDR_HOME/tls/ca.pem` if present.",
    "request_timeout_s": "How long a CLI request waits for its answer.",
    "context": "Default `default`. Workers read it only without `KTRDR_NATS_URL`, and take its URL and CA, not its "
               "credential.",
    "api_url": "The status API, when no context names it.",
    "worker_index": "With `KTRDR_WORKER_ID` unset, the id is `<host>-<type>-<index>`; an id in use by another live "
                    "process is refused at registration.",
    "slots": "Default: per worker type. A worker fetches only when it has a free slot.",
    "gpu": "Whether the worker's lease says it has a GPU; unset, the worker type decides (the GPU host's: yes).",
    "device_name": "The device its lease names; unset, the GPU host's own (`cuda:<name>`).",
    "device_memory_mb": "The device memory its lease names; unset, the GPU host's own.",
    "ib_host": "TWS / IB Gateway's address.",
    "ib_client_id": "The API client id the IB host connects with.",
    "ib_connect_timeout_s": "Connecting to the gateway.",
    "ib_request_timeout_s": "One request; an unanswered one is asked again twice.",
    "api_host": "Where the status API listens.",
    "api_port": "With `KTRDR_API_HOST`; `ktrdr up --api-port` sets it.",
    "api_enabled": "False: no status API (and no dashboard).",
    "api_token": "16+ of `A-Za-z0-9-._~+/=`.",
    "api_token_file": "Created 0600 if absent; clients read it.",
    "api_max_body_bytes": "512 KiB: well under NATS's 1 MiB payload once a body is a record or a job.",
    "gpu_fallback_timeout_s": "A training no GPU worker has claimed by then is also offered to CPU workers.",
    "max_attempts": "An op whose worker is lost is retried up to this many attempts in all, then fails.",
    "ops_index": "Rebuilt from the stream when missing.",
    "prune_interval_s": "Each run also purges the chunks of replaced objects.",
    "ops_max_bytes": "The `ops` bucket's byte limit (the records); `ib_active` and `model_pins` have 1 and 64 MiB.",
    "data_max_bytes": "The `data` object store's byte limit (`KTRDR_RESULTS_MAX_BYTES`, `_MODELS_`, "
                      "`_CHECKPOINTS_`: the `RESULTS` stream, the `models` store, the `CHECKPOINTS` stream); full, "
                      "a store refuses new writes, and past half full it is swept of what no record names.",
    "results_max_bytes": "See `KTRDR_DATA_MAX_BYTES`.",
    "models_max_bytes": "See `KTRDR_DATA_MAX_BYTES`.",
    "checkpoints_max_bytes": "See `KTRDR_DATA_MAX_BYTES`.",
    "ops_stream_max_bytes": "Full, it refuses new reports; past half full the coordinator deletes what it has applied.",
}


def _field_comments(cls: type) -> dict[str, str]:
    """Each field defined in ``cls`` → the comment above it (and at the end of its line).

    A comment block describes the field right under it; fields that follow it with no blank line
    and no comment of their own share it, and say so (``api_token_file`` under ``api_token``'s)."""
    found: dict[str, str] = {}
    comment: list[str] = []
    group: str | None = None
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if line.startswith("    #"):
            comment.append(stripped.lstrip("#").strip())
            group = None
            continue
        field = re.match(r"    (\w+): [^=]+(?:=|$)", line)
        if field and not line.startswith("     ") and not field.group(1).startswith("_"):
            name = field.group(1)
            tail = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            if comment or group is None:
                found[name] = " ".join([*comment, tail]).strip()
                group = name if comment else None
            elif name in NOTES:  # said for it on its own: not necessarily the comment's subject
                found[name] = tail
            else:
                found[name] = " ".join(t for t in (f"With `KTRDR_{group.upper()}` (above).", tail) if t)
            comment = []
        else:
            comment, group = [], None  # a blank line, a decorator, a method: what follows is on its own
    return found


def _size(value: float) -> str:
    """Bytes in the unit they were chosen in (``8 GiB``, ``512 KiB``); other numbers as they are."""
    if isinstance(value, int) and value >= 1024 and value % 1024 == 0:
        for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
            if value % (1 << shift) == 0:
                return f"{value >> shift} {unit}"
    return f"{value:,}" if isinstance(value, int) and value >= 100_000 else f"{value:g}"


def _default(field: Any) -> str:
    from ktrdr.settings import default_home

    factory = field.default_factory
    if factory is default_home:
        return "`~/.ktrdr`"
    value = factory() if factory is not None else field.default
    if value is None or value == []:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return _size(value)
    return f"`{value}`"


def _type(field: Any) -> str:
    annotation = field.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        text = " \\| ".join(f"`{a}`" for a in args)
    elif get_origin(annotation) is list or (args and get_origin(args[0]) is list):
        text = "comma list"
    else:
        base = args[0] if args and get_origin(annotation) is not None else annotation
        text = getattr(base, "__name__", str(base)).replace("SecretStr", "secret").replace("Path", "path")
    bounds = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                bounds.append(f"{sign} {_size(getattr(item, attr))}")
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def configuration() -> str:
    """One row per variable: its default, type and bounds from the field, who reads it from the
    class, what it does from the comment above the field (and NOTES)."""
    rows: dict[str, dict[str, Any]] = {}
    for cls, who in _settings_classes():
        inherited = {n for base in cls.__mro__[1:] for n in getattr(base, "model_fields", {})}
        comments = _field_comments(cls)
        for name, field in cls.model_fields.items():
            if name in inherited:
                continue
            row = rows.setdefault(name, {"default": _default(field), "type": _type(field), "who": [],
                                         "what": comments.get(name, "")})
            row["who"].append(who)  # `context`: the CLI's and the workers' alike
    lines = ["| variable | default | type | read by | what |", "|---|---|---|---|---|"]
    for name, row in rows.items():
        said = re.sub(r":(?:meth|class|func|attr):", "", row["what"]).replace("``", "`")
        what = " ".join(t for t in (said, NOTES.get(name, "")) if t)
        lines.append(f"| `KTRDR_{name.upper()}` | {row['default']} | {row['type']} | {', '.join(row['who'])} | "
                     f"{_cell(what)} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the CLI: typer's command tree -----------------------------------------------------------------

def cli() -> str:
    import typer

    from ktrdr.cli.app import app

    out: list[str] = []

    def walk(command: Any, path: list[str], parent: Any) -> None:
        # typer brings a click of its own: its Context, found on the command, not click's.
        ctx = command.context_class(command, info_name=path[-1], parent=parent)
        out.append(_command_doc(command, ctx, path))
        for name in sorted(getattr(command, "commands", {})):
            sub = command.commands[name]
            if not sub.hidden:
                walk(sub, [*path, name], ctx)

    walk(typer.main.get_command(app), ["ktrdr"], None)
    return "\n".join(out).rstrip()


def _command_doc(command: Any, ctx: Any, path: list[str]) -> str:
    """A command's heading, usage, help and its options as its --help lists them."""
    level = "#" * min(5, 2 + len(path) - 1)
    lines = [f"{level} `{' '.join(path)}`", "", f"`{' '.join([*path, *command.collect_usage_pieces(ctx)])}`", ""]
    text = inspect.cleandoc(command.help or "").replace("\b\n", "")
    if text:
        lines += [text, ""]
    records = [p.get_help_record(ctx) for p in command.params if not getattr(p, "hidden", False)]
    records = [r for r in records if r is not None]
    if records:
        lines += ["| argument or option | help |", "|---|---|"]
        lines += [f"| `{_cell(names)}` | {_cell(help_text)} |" for names, help_text in records]
        lines.append("")
    return "\n".join(lines)


# --- the status API: Starlette's routes and the op types -------------------------------------------

def _app_routes() -> list[Any]:
    """Every route the coordinator serves, from the app it builds (a stand-in coordinator: nothing runs)."""
    from coordinator.api import SUBMIT_PATH, build_app
    from coordinator.dashboard.routes import dashboard_routes
    from coordinator.metrics import Metrics
    from coordinator.routes import optype_routes
    from coordinator.settings import CoordinatorSettings

    stand_in = SimpleNamespace(layer=None, ops=None, registry=None, dispatcher=None, metrics=Metrics(), nc=None,
                               js=None, jetstream=None, live=None, api_token="t" * 32, api_viewer_token="v" * 32,
                               settings=CoordinatorSettings(api_allowed_hosts=["localhost"]),
                               collect_metrics=lambda: None)
    guard = build_app(stand_in, [*optype_routes(), *dashboard_routes()])  # type: ignore[arg-type]
    submit = SimpleNamespace(path=SUBMIT_PATH, methods={"POST"}, endpoint=type(guard.app).__call__,
                             name="SubmitEndpoint")
    return [submit, *guard.app.app.routes]


def _where(function: Callable[..., Any]) -> str:
    module = inspect.getmodule(function)
    path = Path(inspect.getsourcefile(function) or "").resolve().relative_to(ROOT)
    name = function.__qualname__.replace(".<locals>.", ".")
    return f"[`{name}`](../../{path}) " if module else name


def api() -> str:
    from coordinator.guard import HEALTH_PATHS, PAGE_PATHS, STATIC_PREFIX
    from ktrdr.optypes import op_types

    lines = ["| method | path | answered by | token |", "|---|---|---|---|"]
    for route in sorted(_app_routes(), key=lambda r: (r.path, sorted(getattr(r, "methods", None) or ["GET"]))):
        methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
        endpoint = getattr(route, "endpoint", None)
        path = route.path + ("/{path}" if endpoint is None else "")
        open_ = route.path in HEALTH_PATHS | PAGE_PATHS or route.path.startswith(STATIC_PREFIX.rstrip("/"))
        where = _where(endpoint).strip() if endpoint is not None else "static files"
        lines.append(f"| {' '.join(methods)} | `{path}` | {where} | {'no' if open_ else 'yes'} |")
    lines += ["", "### Operation types", "",
              "Submitted with `POST /api/v1/operations` as `{\"type\": NAME, \"params\": {...}}`, or through the "
              "type's own route with the bare params.", ""]
    for declared in sorted(op_types(), key=lambda t: t.name):  # declared in import order: not stable
        runs = "the coordinator" if declared.on_coordinator else ", ".join(f"`{c}`" for c in declared.runs.capabilities)
        lines += [f"#### `{declared.name}`", "", declared.summary or "", "",
                  f"Runs on {runs}" + (f"; route `POST {declared.api}`" if declared.api else "")
                  + (f"; CLI `{declared.cli}`" if declared.cli else "") + ".", ""]
        lines += _params_table(declared.params.model_json_schema())
    return "\n".join(lines).rstrip()


def _params_table(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    if not properties:
        return ["No params.", ""]
    required = set(schema.get("required", []))
    lines = ["| param | type | default |", "|---|---|---|"]
    for name, prop in properties.items():
        default = "required" if name in required else f"`{_json(prop.get('default'))}`"
        lines.append(f"| `{name}` | {_schema_type(prop)} | {default} |")
    return [*lines, ""]


def _schema_type(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_schema_type(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "$ref" in prop:
        return prop["$ref"].rsplit("/", 1)[1]
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_schema_type(prop.get('items', {}))}"
    return str(kind)


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


# --- writing ---------------------------------------------------------------------------------------

PARTS: dict[str, tuple[str, Callable[[], str]]] = {
    "settings": ("docs/operating/configuration.md", configuration),
    "cli": ("docs/reference/cli.md", cli),
    "api": ("docs/reference/api.md", api),
}


def render(page: str, parts: Iterable[tuple[str, str]]) -> str:
    for name, body in parts:
        start = f"<!-- generated: {name} -->"
        if start not in page:
            raise SystemExit(f"no {start} marker in the page that should hold it")
        before, _, rest = page.partition(start)
        _, _, after = rest.partition(END)
        page = f"{before}{start}\n<!-- made by `python docs/gen.py` from the code: edit the code, not this -->\n\n" \
               f"{body}\n\n{END}{after}"
    return page


def updated() -> dict[Path, tuple[str, str]]:
    """Each page with generated parts → (as it is, as the code says it should be)."""
    pages: dict[Path, list[tuple[str, str]]] = {}
    for name, (page, make) in PARTS.items():
        pages.setdefault(ROOT / page, []).append((name, make()))
    return {path: (path.read_text(), render(path.read_text(), parts)) for path, parts in pages.items()}


def stale() -> list[str]:
    return [str(path.relative_to(ROOT)) for path, (now, due) in updated().items() if now != due]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale; write nothing")
    check = parser.parse_args().check
    found = []
    for path, (now, due) in updated().items():
        if now != due:
            found.append(str(path.relative_to(ROOT)))
            if not check:
                path.write_text(due)
    if check and found:
        print(f"stale: {', '.join(found)}: run `python docs/gen.py`", file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(found)) if found and not check else "the generated docs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
