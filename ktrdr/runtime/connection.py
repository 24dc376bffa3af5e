"""Connecting to NATS with the options every ktrdr process wants: its credential, the fleet's CA,
a private reply inbox, and reconnecting forever once connected.

Each process type has a default role (coordinator, worker, ib, client) whose credential it finds
under ``<home>/auth`` by itself, so ``ktrdr up`` and every command on its host need no settings;
``KTRDR_NATS_CREDS`` and ``KTRDR_NATS_CA`` name them explicitly on another host.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.client import Client

import nats
from ktrdr.security.credentials import CredentialError, NatsCredential, credential_path
from ktrdr.security.tls import client_context
from ktrdr.settings import CommonSettings

log = logging.getLogger(__name__)


class NatsConnectError(RuntimeError):
    """A connection that cannot succeed by retrying: refused credentials, an untrusted server."""


@dataclass(frozen=True, kw_only=True)
class NatsAuth:
    credential: NatsCredential | None = None
    credential_file: Path | None = None
    ca: Path | None = None

    @classmethod
    def resolve(cls, settings: CommonSettings, *, role: str) -> NatsAuth:
        """The explicit settings, else this host's files for ``role`` (written by ``ktrdr up``)."""
        creds = settings.nats_creds
        if creds is None and credential_path(settings.auth_dir, role).exists():
            creds = credential_path(settings.auth_dir, role)
        ca = settings.nats_ca
        # Harmless against a server without TLS: the context is used only when the server asks for TLS.
        if ca is None and settings.tls_dir.joinpath("ca.pem").exists():
            ca = settings.tls_dir / "ca.pem"
        return cls(credential=NatsCredential.load(creds) if creds else None, credential_file=creds, ca=ca)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if self.credential is not None:
            opts["nkeys_seed_str"] = self.credential.seed
            opts["inbox_prefix"] = self.credential.inbox_prefix
        if self.ca is not None:
            if not self.ca.is_file():
                raise CredentialError(f"the CA certificate {self.ca} does not exist")
            opts["tls"] = client_context(self.ca)
        return opts


def split_urls(url: str) -> list[str]:
    """A comma-separated list names the nodes of a cluster (nats/cluster/*.conf)."""
    return [u.strip() for u in url.split(",") if u.strip()]


def explain(exc: BaseException, url: str, auth: NatsAuth) -> str:
    """What to do about a connection the server refused."""
    text = str(exc)
    if "Authorization Violation" in text or isinstance(exc, nats.errors.AuthorizationError):
        if auth.credential is None:
            return (f"{url} requires a credential: set KTRDR_NATS_CREDS to the role's .nk file "
                    "(`ktrdr fleet invite ROLE` prints one)")
        return f"{url} refused the credential {auth.credential_file}: not a user of this server"
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"{url}: the server's TLS certificate is not signed by the CA "
                f"{auth.ca or '(none given: set KTRDR_NATS_CA)'} ({getattr(exc, 'verify_message', text)})")
    if isinstance(exc, ssl.SSLError):
        return f"{url}: TLS failed ({text})"
    return f"cannot reach NATS at {url}: {text or type(exc).__name__}"


_CLOSING: set[asyncio.Task[None]] = set()
# nats-server refuses every connection for the instant it applies a config reload (seen in its log
# between "Reloaded: accounts" and "Reloaded server configuration"), and `ktrdr fleet invite` and
# `revoke` reload it: a long-running process takes a refusal as final only once it has lasted this long.
REFUSAL_GRACE_S = 1.0


def _fatal(exc: BaseException) -> bool:
    text = str(exc)
    return ("Authorization Violation" in text or isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError)
            or "CERTIFICATE_VERIFY_FAILED" in text)


async def connect(
    url: str,
    *,
    name: str,
    auth: NatsAuth | None = None,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
    reconnect: bool = True,
    quiet: bool = False,
    on_error: Callable[[Exception], None] | None = None,
    attempts: int = 3,
    on_refused: Callable[[str], None] | None = None,
) -> Client:
    """Connect, and keep reconnecting forever: a restarted nats-server must not end a worker.

    ``reconnect=False`` (commands): ``attempts`` tries of each server (0.25 s apart), then
    :class:`NatsConnectError`; a CLI passes 1, so a platform that is down is reported at once. ``quiet``: failed
    tries are not logged (a command reports the outcome once). ``on_error``: told of every error the
    server reports once connected (a permissions violation among them). A refused credential or an
    untrusted certificate fails at once with a clear :class:`NatsConnectError`: retrying cannot fix
    it, and nats-py would retry for minutes. Once connected, the same refusal (the credential was
    revoked: ``ktrdr fleet revoke``) closes the connection, logs one line and calls ``on_refused``
    with it, rather than retrying four times a second for ever.
    """
    auth = auth or NatsAuth()
    if auth.credential is None and not quiet:
        log.warning("connecting to %s without a credential: only a server without auth accepts this", url)
    connected = False

    refused: list[str] = []
    refused_since: list[float] = []  # the first refusal of the current run of them

    def passing(exc: Exception) -> bool:
        """A refusal within the grace of the first one (a long-running process only): tried again."""
        if not reconnect or isinstance(exc, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return False
        now = time.monotonic()
        if not refused_since:
            refused_since.append(now)
        if now - refused_since[0] >= REFUSAL_GRACE_S:
            return False
        log.warning("nats: %s refused the credential; trying again (a server reloading its config?)", url)
        return True

    async def error_cb(exc: Exception) -> None:
        if _fatal(exc) and passing(exc):
            return
        if not connected and _fatal(exc):
            raise NatsConnectError(explain(exc, url, auth))
        if connected and _fatal(exc):
            if not refused:
                refused.append(f"{explain(exc, url, auth)} (revoked?); not reconnecting")
                log.error("%s", refused[0])
                if client is not None:
                    closing = asyncio.get_running_loop().create_task(client.close())
                    _CLOSING.add(closing)  # kept until done: a task nobody holds may be collected mid-close
                    closing.add_done_callback(_CLOSING.discard)
                if on_refused is not None:
                    on_refused(refused[0])
            return
        if on_error is not None:
            on_error(exc)
        log.log(logging.DEBUG if quiet else logging.WARNING, "nats: %s", exc)

    client: Client | None = None

    async def disconnected_cb() -> None:
        # nats-py calls this on the process's own close too (a clean stop): only a lost connection warns.
        if connected and not quiet and not (client is not None and client.is_closed):
            log.warning("nats: disconnected from %s", url)

    async def reconnected_cb() -> None:
        refused_since.clear()
        log.info("nats: reconnected to %s", url)
        if on_reconnect is not None:
            await on_reconnect()

    try:
        nc = await nats.connect(
            split_urls(url),
            name=name,
            connect_timeout=connect_timeout,
            # nats-py loops forever on 0: at least one try.
            max_reconnect_attempts=-1 if reconnect else max(1, attempts),
            reconnect_time_wait=0.25,
            allow_reconnect=True,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            # Large enough that a burst of progress during a reconnect is buffered, not dropped.
            pending_size=64 * 1024 * 1024,
            drain_timeout=5,
            **auth.options(),
        )
    except NatsConnectError:
        raise
    except Exception as exc:
        raise NatsConnectError(explain(exc, url, auth)) from None
    connected = True
    refused_since.clear()
    client = nc
    return nc
