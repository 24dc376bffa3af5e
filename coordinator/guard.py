"""The status API's front door: one ASGI wrapper that every request passes before any route.

It wraps the whole app (the fast submit endpoint included), so no route can skip a check:

* ``Host`` must name this API (``api_allowed_hosts``): a page on a rebinding DNS name that
  resolves to 127.0.0.1 sends its own name and is refused (421);
* an ``Origin`` header must be this API's own or one of ``api_allowed_origins`` (403); only for
  those are CORS headers added, preflights included;
* every route but ``/health``, ``/health/live`` and ``/health/ready`` (and ``/metrics`` when
  ``metrics_auth`` is off), the dashboard's page and assets (which hold no data) and its sign-in
  (``/api/v1/session``, which checks the token it is given) needs ``Authorization: Bearer <token>``
  or, from the dashboard, a live session in its ``ktrdr_session`` cookie (401): a random id made at
  sign-in (``coordinator.dashboard.sessions``), never the token. The cookie is HttpOnly,
  SameSite=Strict and, over TLS, Secure; the Origin and Content-Type checks below apply to it as to
  a header, so a page on another site can neither send it nor make a request that would;
* every POST and any request with a body must say ``Content-Type: application/json`` (415): a
  cross-site form or ``fetch`` can only send text/plain and the like without a preflight;
* a body may not exceed ``api_max_body_bytes`` (413), by Content-Length before reading it or,
  for a chunked one, by counting as it arrives;
* an exception that escapes a route is logged and, if nothing was answered yet, answered with a
  JSON 500.

A request came over TLS when the server says so (scope scheme ``https``) or when a proxy named in
``trusted_proxies`` (``KTRDR_API_TRUSTED_PROXIES``) says ``X-Forwarded-Proto: https``; the API's own
origin is then ``https://<host>``, and the dashboard's cookie is Secure. The guard tells the routes
what it found in the scope: ``ROLE_KEY`` (``operator`` or ``viewer``, absent for neither) and
``TLS_KEY``.

Every refusal is a JSON ``{"error": ...}`` counted in ``ktrdr_api_errors``. The checks cost a
pass over the header list and a few comparisons with values prepared here, once.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import Literal

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coordinator.dashboard.sessions import Sessions, digest

log = logging.getLogger(__name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
READ_METHODS = frozenset({"GET", "HEAD"})
_JSON = b"application/json"
_CORS_METHODS = b"GET, POST, DELETE"
_CORS_HEADERS = b"authorization, content-type"
# What a load balancer or systemd polls without a token: states, no data.
HEALTH_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
# The dashboard's shell and sign-in: no data until the page holds a token.
PAGE_PATHS = frozenset({"/", "/dashboard", "/favicon.ico", "/api/v1/session"})
STATIC_PREFIX = "/static/"
SESSION_COOKIE = "ktrdr_session"
_COOKIE_PREFIX = SESSION_COOKIE.encode() + b"="
# Far longer than an id Sessions makes: anything longer is not one, and is not hashed to find out.
_MAX_SESSION_ID = 128
OPERATOR, VIEWER = "operator", "viewer"
# What the guard leaves in the scope for the routes.
ROLE_KEY = "ktrdr.role"
TLS_KEY = "ktrdr.tls"


def session_cookie(cookie: bytes) -> bytes | None:
    """The value of the ``ktrdr_session`` cookie in a Cookie header, if there is one."""
    for part in cookie.split(b";"):
        part = part.strip()
        if part.startswith(_COOKIE_PREFIX):
            return part[len(_COOKIE_PREFIX):]
    return None


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as compared with ``trusted_proxies`` (an IPv4-mapped IPv6 one as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def header_host(host: bytes) -> bytes:
    """A Host header's name: lower case, without the port (IPv6 keeps its brackets)."""
    if host[:1] == b"[":
        return host[: host.find(b"]") + 1].lower()
    return host.partition(b":")[0].lower()


def is_json(content_type: bytes) -> bool:
    return content_type == _JSON or content_type.partition(b";")[0].strip().lower() == _JSON


class ApiGuard:
    def __init__(self, *, app: ASGIApp, token: str, allowed_hosts: Iterable[str], allowed_origins: Iterable[str],
                 max_body_bytes: int, metrics_auth: bool, errors: Counter, viewer_token: str | None = None,
                 trusted_proxies: Iterable[str] = (), sessions: Sessions | None = None) -> None:
        """``viewer_token``: the API's read-only role, allowed GET and HEAD only. ``trusted_proxies``:
        the addresses whose ``X-Forwarded-Proto`` is believed."""
        self.app = app
        self.set_tokens(token=token, viewer_token=viewer_token)
        self.sessions = sessions if sessions is not None else Sessions()
        self._proxies = frozenset(ip for ip in map(ip_of, trusted_proxies) if ip is not None)
        hosts = set(allowed_hosts)
        self._any_host = "*" in hosts
        self._hosts = frozenset(h.encode() for h in hosts)
        self._origins = frozenset(o.encode() for o in allowed_origins)
        self._max_body = max_body_bytes
        self._open_paths = (HEALTH_PATHS if metrics_auth else HEALTH_PATHS | {"/metrics"}) | PAGE_PATHS
        self._errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                # No route speaks WebSocket: refuse before any handshake rather than guard it too.
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        host = auth = ctype = length = chunked = origin = preflight = cookie = forwarded_proto = None
        for name, value in scope["headers"]:
            if name == b"host":
                if host is not None:
                    return await self._refuse(send, 400, "more than one Host header")
                host = value
            elif name == b"authorization":
                if auth is not None:
                    return await self._refuse(send, 400, "more than one Authorization header")
                auth = value
            elif name == b"content-type":
                if ctype is not None:
                    return await self._refuse(send, 400, "more than one Content-Type header")
                ctype = value
            elif name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = value
            elif name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = value
            elif name == b"cookie":
                cookie = value if cookie is None else cookie + b"; " + value
            elif name == b"x-forwarded-proto":
                forwarded_proto = value

        if host is None:
            return await self._refuse(send, 400, "missing Host header")
        if not self._any_host and host not in self._hosts and header_host(host) not in self._hosts:
            return await self._refuse(send, 421, f"this API does not answer to the host {host.decode('latin-1')!r}: "
                                                 "add it to KTRDR_API_ALLOWED_HOSTS")
        tls = scope.get("scheme") == "https" or (forwarded_proto is not None
                                                 and self._proxied_tls(scope, forwarded_proto))
        scope[TLS_KEY] = tls
        cors = None
        if origin is not None:
            if origin in self._origins or (self._origins and origin.lower() in self._origins):
                cors = origin
            elif origin != (b"https://" if tls else b"http://") + host:
                return await self._refuse(send, 403, f"requests from the origin {origin.decode('latin-1')!r} are "
                                                     "not allowed: add it to KTRDR_API_ALLOWED_ORIGINS")
            if cors is not None and preflight is not None and scope["method"] == "OPTIONS":
                return await self._preflight(send, cors)

        session_id = role = None
        if auth is not None:
            role = self._bearer_role(auth)
        elif cookie is not None:
            session_id = session_cookie(cookie)
            if session_id is not None:
                role = self.session_role(session_id)
        if role is not None:
            scope[ROLE_KEY] = role
        path = scope["path"]
        if role != OPERATOR and path not in self._open_paths and not path.startswith(STATIC_PREFIX):
            if role == VIEWER:
                if scope["method"] not in READ_METHODS:
                    return await self._refuse(send, 403, "the viewer token is read-only (GET): submitting and "
                                                         "cancelling take the API token", cors)
            elif auth is not None:
                return await self._refuse(send, 401, "wrong bearer token", cors,
                                          [(b"www-authenticate", b'Bearer realm="ktrdr", error="invalid_token"')])
            elif session_id is not None:
                return await self._refuse(send, 401, "the dashboard session has ended (expired, signed out, or "
                                                     "its token changed): sign in again", cors,
                                          [(b"www-authenticate", b'Bearer realm="ktrdr"')])
            else:
                return await self._refuse(send, 401, "missing bearer token (Authorization: Bearer <token>)", cors,
                                          [(b"www-authenticate", b'Bearer realm="ktrdr"')])

        has_body = chunked is not None or (length is not None and length != b"0")
        if (has_body or scope["method"] in BODY_METHODS) and (ctype is None or not is_json(ctype)):
            return await self._refuse(send, 415, "the request body must be JSON (Content-Type: application/json)",
                                      cors)
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, 400, "invalid Content-Length", cors)
            # The length check first: int() refuses strings of thousands of digits.
            if len(length) > 15 or int(length) > self._max_body:
                return await self._too_large(send, cors)
        if chunked is not None:
            # No length announced: read it here, counting, and hand the route the whole body.
            body = await self._read_body(receive)
            if body is None:
                return
            if body is False:
                return await self._too_large(send, cors)
            receive = _replay(body, receive)

        if cors is not None:
            send = _with_cors(send, cors)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            # Starlette has answered a route's exception already (its JSON 500) and re-raises it.
            log.exception("status API request %s %s failed", scope["method"], scope["path"])
            try:
                await self._refuse(send, 500, f"internal error: {exc}")
            except RuntimeError:  # the server's way of saying a response was already sent
                pass

    def set_tokens(self, *, token: str, viewer_token: str | None = None) -> None:
        """The tokens the API takes from now on. A session made from a token no longer taken ends
        with it (:meth:`session_role` compares digests)."""
        self._token = token.encode()
        self._bearer = b"Bearer " + self._token
        self._viewer = viewer_token.encode() if viewer_token and viewer_token != token else None
        self._digests = {OPERATOR: digest(self._token), **({VIEWER: digest(self._viewer)} if self._viewer else {})}

    def _bearer_role(self, auth: bytes) -> str | None:
        if hmac.compare_digest(auth, self._bearer):
            return OPERATOR
        # The scheme is case-insensitive (RFC 9110 11.1); a client may send "bearer".
        scheme, _, credentials = auth.partition(b" ")
        return self.token_role(credentials.strip(b" ")) if scheme.lower() == b"bearer" else None

    def token_role(self, token: bytes) -> str | None:
        """Whose a bare token is: ``operator`` (the API token), ``viewer`` or None (constant-time
        compares). The dashboard's sign-in asks it of the token it is given."""
        if hmac.compare_digest(token, self._token):
            return OPERATOR
        if self._viewer is not None and hmac.compare_digest(token, self._viewer):
            return VIEWER
        return None

    def open_session(self, token: bytes) -> tuple[str, str] | None:
        """``(session id, role)`` of a new dashboard session for a right token, else None."""
        role = self.token_role(token)
        if role is None:
            return None
        return self.sessions.create(role=role, token_digest=digest(token)), role

    def session_role(self, session_id: bytes) -> str | None:
        """The role of a live session whose token the API still takes, else None."""
        if len(session_id) > _MAX_SESSION_ID:
            return None
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if not hmac.compare_digest(self._digests.get(session.role, b""), session.token_digest):
            self.sessions.revoke(session_id)
            return None
        return session.role

    def _proxied_tls(self, scope: Scope, forwarded_proto: bytes) -> bool:
        """Whether a trusted proxy says the client's request came over TLS (the first of a list is
        the client's side)."""
        client = scope.get("client")
        if not self._proxies or not client or ip_of(client[0]) not in self._proxies:
            return False
        return forwarded_proto.partition(b",")[0].strip().lower() == b"https"

    async def _read_body(self, receive: Receive) -> bytes | Literal[False] | None:
        """The whole body; False once it passes the limit; None if the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return False
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, send: Send, cors: bytes | None) -> None:
        # The server reads and discards the rest of the body, so the client gets to read this.
        await self._refuse(send, 413, f"request body too large: limit {self._max_body} bytes", cors)

    async def _refuse(self, send: Send, status: int, error: str, cors: bytes | None = None,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = json.dumps({"error": error}).encode()
        headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body)), *(extra or [])]
        if cors is not None:
            headers += _cors_headers(cors)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self._errors.labels(status=str(status)).inc()

    async def _preflight(self, send: Send, origin: bytes) -> None:
        headers = [*_cors_headers(origin), (b"access-control-allow-methods", _CORS_METHODS),
                   (b"access-control-allow-headers", _CORS_HEADERS), (b"access-control-max-age", b"600"),
                   (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _cors_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin), (b"vary", b"origin")]


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that yields ``body`` in one message, then whatever the server says next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _with_cors(send: Send, origin: bytes) -> Send:
    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *_cors_headers(origin)]}
        await send(message)

    return send_with_cors

