"""NATS credentials: one nkey per role, kept in files only their owner can read.

A credential file holds the nkey seed alone, so the stock ``nats`` CLI takes it too
(``nats --nkey ~/.ktrdr/auth/client.nk``). The server config holds only the public keys.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path

import nkeys

from subjects import roles


class CredentialError(RuntimeError):
    pass


HOST_LINE = "# ktrdr host:"  # in a host's credential file (`ktrdr fleet invite --host`): its name


@dataclass(frozen=True, kw_only=True)
class NatsCredential:
    seed: str
    public_key: str
    host: str | None = None  # the fleet host it identifies, when its file names one

    @property
    def inbox_prefix(self) -> str:
        return roles.inbox_prefix(self.public_key)

    @classmethod
    def generate(cls) -> NatsCredential:
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER).decode()
        return cls.from_seed(seed)

    @classmethod
    def from_seed(cls, seed: str) -> NatsCredential:
        try:
            kp = nkeys.from_seed(bytearray(seed.strip().encode()))
        except Exception as exc:  # nkeys raises its own hierarchy and binascii errors alike
            raise CredentialError(f"not a NATS user nkey seed ({type(exc).__name__})") from None
        public = kp.public_key.decode()
        kp.wipe()
        if not public.startswith("U"):
            raise CredentialError("not a NATS *user* nkey seed (it must start with SU)")
        return cls(seed=seed.strip(), public_key=public)

    @classmethod
    def load(cls, path: Path) -> NatsCredential:
        try:
            text = path.read_text()
        except OSError as exc:
            raise CredentialError(f"cannot read the NATS credential {path}: {exc.strerror or exc}") from None
        # A file with comments or a decorated seed: take the line that is the seed.
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("SU")]
        if not lines:
            raise CredentialError(f"{path} holds no NATS user nkey seed (a line starting with SU)")
        hosts = [ln.strip()[len(HOST_LINE):].strip() for ln in text.splitlines() if ln.strip().startswith(HOST_LINE)]
        credential = cls.from_seed(lines[0])
        return replace(credential, host=hosts[0]) if hosts and hosts[0] else credential


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` readable by its owner only (0600), its folder 0700; never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def credential_path(auth_dir: Path, role: str) -> Path:
    return auth_dir / f"{role}.nk"


def ensure_credentials(auth_dir: Path) -> dict[str, NatsCredential]:
    """One credential per role under ``auth_dir``: kept if present, made if not."""
    out: dict[str, NatsCredential] = {}
    for role in roles.ROLES:
        path = credential_path(auth_dir, role)
        if path.exists():
            out[role] = NatsCredential.load(path)
            continue
        cred = NatsCredential.generate()
        write_private(path, cred.seed + "\n")
        out[role] = cred
    return out
