"""Connecting to NATS with the options every ktrdr process wants: its credential, the fleet's CA,
a private reply inbox, and reconnecting forever once connected.

Each process type has a default role (coordinator, worker, ib, client) whose credential it finds
under ``<home>/auth`` by itself, so ``ktrdr up`` and every command on its host need no settings;
``KTRDR_NATS_CREDS`` and ``KTRDR_NATS_CA`` name them explicitly on another host.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from ktrdr.runtime.retry import RetryPolicy
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
    verify = str(getattr(exc, "verify_message", "") or "")
    if "mismatch" in verify or "mismatch" in text:
        return (f"{url}: the server's TLS certificate does not cover the address or name in the URL "
                f"({verify or text}); `ktrdr up --name` adds one, or connect by a name it covers")
    if isinstance(exc, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"{url}: the server's TLS certificate is not signed by the CA "
                f"{auth.ca or '(none given: set KTRDR_NATS_CA)'} ({getattr(exc, 'verify_message', text)})")
    if isinstance(exc, ssl.SSLError):
        return f"{url}: TLS failed ({text})"
    return f"cannot reach NATS at {url}: {text or type(exc).__name__}"


def describe(url: str, auth: NatsAuth, source: str | None = None) -> str:
    """The URL, where it came from and the files a connection uses, for messages about it."""
    said = [f"from {source}"] if source else []
    said.append(f"credential {auth.credential_file or 'none'}")
    if auth.ca is not None:
        said.append(f"CA {auth.ca}")
    return f"{url} ({'; '.join(said)})"


_CLOSING: set[asyncio.Task[None]] = set()
# nats-server refuses every connection for the instant it applies a config reload (seen in its log
# between "Reloaded: accounts" and "Reloaded server configuration"), and `ktrdr fleet invite` and
# `revoke` reload it: a long-running process takes a refusal as final only once it has lasted this long.
REFUSAL_GRACE_S = 1.0
# A long-running process's first connection: tried again after pauses growing to 5 s, for ever (a
# container may start before its nats-server), with one line per try naming the URL and the files.
# Once connected, nats-py reconnects every RECONNECT_WAIT_S; its failures are logged at the same
# growing intervals, not four times a second.
CONNECT_RETRY = RetryPolicy(first_s=0.25, max_s=5.0)
RECONNECT_WAIT_S = 0.25


def _fatal(exc: BaseException) -> bool:
    text = str(exc)
    return ("Authorization Violation" in text or isinstance(exc, nats.errors.AuthorizationError | ssl.SSLError)
            or "CERTIFICATE_VERIFY_FAILED" in text)


class _Throttle:
    """Whether to log now: at most once per step of :data:`CONNECT_RETRY`, the steps growing until reset."""

    def __init__(self) -> None:
        self.logged = 0
        self.next_at = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self.next_at:
            return False
        self.next_at = now + CONNECT_RETRY.delay(self.logged)
        self.logged += 1
        return True

    def reset(self) -> None:
        self.logged, self.next_at = 0, 0.0


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
    source: str | None = None,
) -> Client:
    """Connect, and keep reconnecting forever: a restarted nats-server must not end a worker.

    ``reconnect=True`` (long-running processes): a server that cannot be reached is tried again after
    the pauses of :data:`CONNECT_RETRY`, for ever, one warning per try naming the URL, where it came
    from (``source``) and the credential and CA files; cancelling the call (a signal) stops it at
    once. ``reconnect=False`` (commands): ``attempts`` tries of each server (0.25 s apart), then
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
    target = describe(url, auth, source)

    refused: list[str] = []
    refused_since: list[float] = []  # the first refusal of the current run of them
    last_error: list[BaseException] = []  # of the try under way: nats-py raises NoServersError after it
    lost = _Throttle()

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
        if not connected:
            last_error[:] = [exc]  # reported once per try, below
            return
        if client is not None and client.is_reconnecting:
            # Every RECONNECT_WAIT_S while the server is away: said at growing intervals.
            if not quiet and lost.due():
                log.warning("nats: cannot reach %s: %s; reconnecting", target, str(exc) or type(exc).__name__)
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
        lost.reset()
        log.info("nats: reconnected to %s", url)
        if on_reconnect is not None:
            await on_reconnect()

    options: dict[str, Any] = dict(
        name=name,
        connect_timeout=connect_timeout,
        reconnect_time_wait=RECONNECT_WAIT_S,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        # Large enough that a burst of progress during a reconnect is buffered, not dropped.
        pending_size=64 * 1024 * 1024,
        drain_timeout=5,
        **auth.options(),
    )
    pauses = CONNECT_RETRY.delays()
    while True:
        nc = Client()
        last_error.clear()
        try:
            # One pass over the servers (nats-py tries each twice, RECONNECT_WAIT_S apart; it loops
            # for ever on 0). A long-running process asks for reconnecting for ever once connected, below.
            await nc.connect(split_urls(url), max_reconnect_attempts=1 if reconnect else max(1, attempts),
                             **options)
            break
        except NatsConnectError:
            raise
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 1.0)
            raise
        except Exception as exc:
            if not reconnect:
                raise NatsConnectError(explain(exc, url, auth)) from None
            why = last_error[0] if last_error else exc
        pause = next(pauses)
        if not quiet:
            log.warning("cannot reach NATS at %s: %s; trying again in %g s", target,
                        str(why) or type(why).__name__, pause)
        await asyncio.sleep(pause)
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1  # read by nats-py at each reconnect
    connected = True
    refused_since.clear()
    client = nc
    return nc
