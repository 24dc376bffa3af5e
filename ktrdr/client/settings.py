"""Settings of the CLI process: ``KTRDR_*`` variables, then the context ``ktrdr up`` wrote (ktrdr.client.context)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from ktrdr.client.context import ContextError, find_context
from ktrdr.settings import CommonSettings

DEFAULT_API_URL = "http://127.0.0.1:8000"


class ClientSettings(CommonSettings):
    request_timeout_s: float = 5.0
    # KTRDR_CONTEXT: a context name (a file in $KTRDR_HOME/contexts) or a path; --context sets it.
    context: str | None = None
    api_url: str = DEFAULT_API_URL
    # `ktrdr data fetch --follow`: how long an IB download may wait with no IB host holding a lease
    # before it is cancelled (0: wait for ever).
    ib_wait_s: float = Field(default=60.0, ge=0)
    _source: str = PrivateAttr(default="the default")
    _context_file: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _apply_context(self) -> ClientSettings:
        named = self.context is not None
        from_env = self.model_fields_set
        if "nats_url" in from_env and not named:
            self._source = "KTRDR_NATS_URL"
            return self
        try:
            found = find_context(self.home, self.context)
        except ContextError as exc:
            # Raised as a ValueError, pydantic would bury it in a validation report: kept for the CLI to say.
            self._source = f"error: {exc}"
            return self
        if found is None:
            return self
        path, ctx = found
        self._context_file = path
        self._source = f"the context {path}"
        if "nats_url" not in from_env:
            self.nats_url = ctx.nats_url
        else:
            self._source = "KTRDR_NATS_URL"
        if "nats_creds" not in from_env and ctx.nats_creds:
            self.nats_creds = Path(ctx.nats_creds)
        if "nats_ca" not in from_env and ctx.nats_ca:
            self.nats_ca = Path(ctx.nats_ca)
        if "api_url" not in from_env and ctx.api_url:
            self.api_url = ctx.api_url
        return self

    @property
    def context_problem(self) -> str | None:
        """Why a context named explicitly could not be used (the command fails with it)."""
        return self._source[len("error: "):] if self._source.startswith("error: ") else None

    @property
    def nats_url_source(self) -> str:
        """Where ``nats_url`` came from, for messages: the context's file, KTRDR_NATS_URL or the default."""
        return self._source

    @property
    def context_file(self) -> Path | None:
        return self._context_file
