"""The status API's bearer token: one random secret in a file only its owner can read.

The coordinator calls :func:`load_or_create_token` once at start, so a fresh install is never
open (secure by default); clients on the same host read the same file (:func:`read_token`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

# RFC 6750 b64token characters: what may follow "Bearer " unquoted.
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
MIN_TOKEN_LENGTH = 16


class TokenError(ValueError):
    """A token that cannot be used (a ValueError, so settings validation reports it)."""


def check_token(token: str, *, source: str) -> str:
    """``token`` if it can travel in a bearer header and is not trivially guessable."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenError(f"the status API token from {source} is shorter than {MIN_TOKEN_LENGTH} characters")
    if not set(token) <= _TOKEN_CHARS:
        raise TokenError(f"the status API token from {source} has characters a bearer token cannot carry "
                         "(use letters, digits and -._~+/=)")
    return token


def read_token(path: Path) -> str | None:
    """The token in ``path``, or None when there is no such file (a client then sends none)."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read the status API token {path}: {exc}") from None
    return check_token(text.strip(), source=str(path))


def load_or_create_token(path: Path) -> str:
    """The token in ``path``, created (0600, its folder 0700) with a fresh random one if absent.

    Creation is race-free: the token is written in full to a private temporary file first and
    then hard-linked into place, which fails when another process got there first. Readers
    therefore never see a half-written file, and the loser of a race adopts the winner's token.
    """
    token = read_token(path)
    if token is not None:
        _warn_if_shared(path)
        return token
    # Only a folder created here is set to 0700: an existing one is the operator's to choose.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    token = read_token(path)
    if token is None:  # removed between the link and the read: someone is cleaning up; say so
        raise TokenError(f"the status API token {path} vanished while it was being created")
    log.info("status API token created in %s", path)
    return token


def _warn_if_shared(path: Path) -> None:
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("the status API token %s is readable by other users: chmod 600 it", path)
