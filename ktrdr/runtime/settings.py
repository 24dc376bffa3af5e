"""Settings of a worker process (every worker type and host): ``KTRDR_*`` variables, then the
context ``ktrdr up`` wrote.

A host with settings of its own subclasses :class:`WorkerSettings` (the IB host:
``host_ib.settings.IbSettings``) and passes its class to ``ktrdr.runtime.entry.run_worker``.

Where the platform is: ``KTRDR_NATS_URL`` (or ``--nats``) when set; else the context ``ktrdr up``
wrote (``KTRDR_CONTEXT``, else ``default``: ``$KTRDR_HOME/contexts/default.json``), for its URL and
CA, as every CLI command reads it. Not its credential: that is the CLI's (the ``client`` role); a
worker's is ``KTRDR_NATS_CREDS``, else this host's worker key under ``$KTRDR_HOME/auth``
(``ktrdr.runtime.connection.NatsAuth.resolve``). On another host, what ``ktrdr fleet invite``
prints gives all three, as options, variables or mounted files named by the variables.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, PrivateAttr, model_validator

from ktrdr.settings import CommonSettings


class WorkerSettings(CommonSettings):
    # Stable across restarts: from configuration, else "<host>-<type>-<index>". Never random,
    # so a restarted worker replaces its own registration instead of adding a duplicate.
    worker_id: str | None = None
    # None: the lowest index no other worker of this type on this host holds (ktrdr.runtime.worker).
    worker_index: int | None = Field(default=None, ge=0)
    slots: int | None = Field(default=None, ge=1)
    # Threads per slot for torch and numpy's BLAS; None: the CPUs this process may use divided by
    # its slots (ktrdr.runtime.cpus). `ktrdr up` gives each of its workers its share of the host.
    threads: int | None = Field(default=None, ge=1)
    # SIGTERM: let running work finish for this long, then cancel it.
    grace_s: float = Field(default=25.0, ge=0)
    # After cancelling on shutdown, how long to wait for handlers to notice.
    cancel_wait_s: float = Field(default=5.0, ge=0)
    # How long a worker's pull request lasts (then a 408, and it is sent again): an idle worker renews
    # one per capability this often. A stop drains its requests instead of waiting them out
    # (ktrdr.runtime.pull), so a long one costs nothing at shutdown; 1 s made nats-server's idle CPU
    # grow with the fleet (bench/README.md, Fleet size).
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    # Extra capabilities, comma separated (tests use it to make a stand-in GPU worker).
    extra_capabilities: str = ""
    gpu: bool | None = None
    device_name: str | None = None
    device_memory_mb: int | None = None
    # A folder of host keys (`ktrdr provision --host-pool`), of which this process holds one no other
    # holds (ktrdr.runtime.hostpool): each scaled container a host of its own. KTRDR_NATS_CREDS wins.
    nats_creds_pool: Path | None = None
    # Written after every lease write, holding the lease's TTL: a container's healthcheck
    # (deploy/healthcheck.py lease) reads "this worker holds a live lease" from it.
    lease_file: Path | None = None
    # KTRDR_CONTEXT: a context name (a file in $KTRDR_HOME/contexts) or a path, as for the CLI.
    context: str | None = None
    _source: str = PrivateAttr(default="the default")
    _problem: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _apply_context(self) -> WorkerSettings:
        given = self.model_fields_set
        if "nats_url" in given:
            self._source = "KTRDR_NATS_URL"
            return self
        from ktrdr.client.context import ContextError, find_context

        try:
            found = find_context(self.home, self.context)
        except ContextError as exc:
            # Raised here, pydantic would bury it in a validation report: the entry point says it.
            self._problem = str(exc)
            return self
        if found is None:
            return self
        path, ctx = found
        self.nats_url = ctx.nats_url
        self._source = f"the context {path}"
        if "nats_ca" not in given and ctx.nats_ca and Path(ctx.nats_ca).exists():
            self.nats_ca = Path(ctx.nats_ca)
        return self

    @property
    def nats_url_source(self) -> str:
        """Where ``nats_url`` came from, for messages: KTRDR_NATS_URL, a context's file or the default."""
        return self._source

    @property
    def context_problem(self) -> str | None:
        """Why the context named by KTRDR_CONTEXT could not be read (the worker does not start)."""
        return self._problem
