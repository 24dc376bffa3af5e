"""Contexts: how the CLI finds the platform that ``ktrdr up`` started, whatever ports it chose.

``ktrdr up`` writes ``$KTRDR_HOME/contexts/<name>.json`` (``default`` unless ``--context``): the NATS
URL, the status API's URL, and the paths of the client credential, the CA and the API token (paths
only: the secrets stay in their own 0600 files). Every other command reads the context named by
``--context`` or ``KTRDR_CONTEXT`` (a name in that folder, or a path to a file), else ``default``.

``KTRDR_NATS_URL``, ``KTRDR_NATS_CREDS`` and ``KTRDR_NATS_CA`` still win field by field. A
``KTRDR_NATS_URL`` set without a context named explicitly means "that server": the default context,
written for another server, is then not read at all (its credential would be refused there).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from ktrdr.security.credentials import write_private

CONTEXT_DIR = "contexts"
DEFAULT_CONTEXT = "default"


class ContextError(ValueError):
    """A context named explicitly that does not exist or cannot be read."""


@dataclass(frozen=True, kw_only=True)
class Context:
    name: str
    nats_url: str
    api_url: str | None = None
    nats_creds: str | None = None
    nats_ca: str | None = None
    api_token_file: str | None = None
    written_by: str | None = None  # "ktrdr up (pid N)"
    written_at: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def context_path(home: Path, name: str) -> Path:
    """A name is a file in ``<home>/contexts``; anything with a slash or ending in .json is a path."""
    if "/" in name or os.sep in name or name.endswith(".json"):
        return Path(name).expanduser()
    return home / CONTEXT_DIR / f"{name}.json"


def read_context(path: Path) -> Context:
    try:
        data = json.loads(path.read_text())
        return Context(**{k: data.get(k) for k in Context.__dataclass_fields__ if k in data})
    except FileNotFoundError:
        raise ContextError(f"no context {path}: `ktrdr up` writes one; `ktrdr context` lists them") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ContextError(f"cannot read the context {path}: {exc}") from None


def find_context(home: Path, name: str | None) -> tuple[Path, Context] | None:
    """The context ``name`` (None: the default one, if ``ktrdr up`` wrote it) and its file; None when
    no name was given and there is no default. A named one that cannot be read is a ContextError."""
    path = context_path(home, name or DEFAULT_CONTEXT)
    if name is None and not path.exists():
        return None
    return path, read_context(path)


def write_context(home: Path, context: Context, *, by: str = "ktrdr up") -> Path:
    path = context_path(home, context.name)
    stamped = replace(context, written_by=f"{by} (pid {os.getpid()})",
                      written_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_private(path, json.dumps(stamped.to_dict(), indent=2) + "\n")
    return path


def list_contexts(home: Path) -> list[Path]:
    return sorted((home / CONTEXT_DIR).glob("*.json"))
