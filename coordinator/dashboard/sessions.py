"""Dashboard sign-ins: the browser's cookie holds a random session id, never the API token.

``POST /api/v1/session`` with a right token makes a session here, in the coordinator's memory: its
role, when it expires and a digest of the token it was made from. The guard
(``coordinator.guard.ApiGuard``) looks the cookie's id up on every request. A session ends when it
expires, when its page signs out, when the coordinator restarts, or when the token it was made from
is no longer one the API takes; past ``max_sessions`` the oldest of its role goes first. A stolen
cookie is therefore worth one session, revocable, not the token itself.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# A working day and the night after: a page left open signs in again once a day, from the link
# `ktrdr up` prints or with the token.
SESSION_TTL_S = 24 * 3600.0
# Each is a hundred bytes; a person signs in from a few browsers, a script has no need of a session.
MAX_SESSIONS = 1_000


def digest(secret: bytes) -> bytes:
    """What is kept of a session id or a token: enough to recognise it, useless to present."""
    return hashlib.sha256(secret).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    role: str
    token_digest: bytes
    expires: float


class Sessions:
    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._clock = clock
        # Keyed by the id's digest, so that a lookup's timing says nothing about the ids held. In
        # creation order, which with one lifetime for all is also expiry order.
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, *, role: str, token_digest: bytes) -> str:
        """A new session's id (43 URL-safe characters, 256 random bits)."""
        now = self._clock()
        while self._sessions and next(iter(self._sessions.values())).expires <= now:
            self._sessions.popitem(last=False)
        if len(self._sessions) >= self.max_sessions:
            # The oldest of the same role goes: whoever holds the viewer token, signing in again and
            # again, cannot sign the operator out.
            same = next((key for key, s in self._sessions.items() if s.role == role), None)
            if same is None:
                self._sessions.popitem(last=False)
            else:
                del self._sessions[same]
        session_id = secrets.token_urlsafe(32)
        self._sessions[digest(session_id.encode())] = Session(role=role, token_digest=token_digest,
                                                              expires=now + self.ttl_s)
        return session_id

    def get(self, session_id: bytes) -> Session | None:
        """The live session of that id, if any (an expired one is dropped)."""
        key = digest(session_id)
        session = self._sessions.get(key)
        if session is not None and session.expires <= self._clock():
            del self._sessions[key]
            return None
        return session

    def revoke(self, session_id: bytes) -> bool:
        return self._sessions.pop(digest(session_id), None) is not None
