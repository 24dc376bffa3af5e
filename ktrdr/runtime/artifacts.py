"""Write-once artifacts: full operation results and checkpoints, which no credential can replace.

An artifact is named ``<host>.<op_id>.<attempt>.<nonce>`` (:func:`subjects.names.artifact_name`):
its chunks go on ``<store>.c.<name>.<n>``, then its info (size, chunk count, SHA-256 digest) on
``<store>.m.<name>``, each subject once. The store's stream keeps one message per subject and
refuses a second (``max_msgs_per_subject=1`` with ``discard_new_per_subject``), so the server
itself refuses a rewrite, whoever sends it; no role but the coordinator may purge (retention
deletes an op's artifacts with it); and a host's key may publish only under its own host name
(``subjects.roles``), so no host writes, or squats, a name another host's worker will write.

Which artifact counts is the op record's business: the claimant reports the name in its
``completed`` event (``result_object``) or an ``info`` event (``checkpoint``), the coordinator
accepts a name only from the host and attempt it names, and readers read that one. A checkpoint is
a new artifact per write; the coordinator purges the one it replaces.

Unlike nats-py's object layout (``ktrdr.runtime.objects``), a chunk is one subject, which is what
lets the server hold every subject to one write. ``nats stream view RESULTS`` shows them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

from ktrdr.runtime import direct
from ktrdr.runtime.objects import BATCH_BYTES, CHUNK_BYTES, DigestMismatch, ObjectTooLarge, digest_of
from ktrdr.runtime.retry import JS_STORE_REFUSED
from subjects import names
from subjects.limits import MAX_ERROR_CHARS, bounded_text

log = logging.getLogger(__name__)

# Chunks of one artifact published and not yet acknowledged, at most (2 MB of them).
IN_FLIGHT = 16



class ArtifactExists(RuntimeError):
    """The name is written already: an artifact is never replaced."""


class ArtifactMissing(LookupError):
    """No such artifact (never written, or deleted with its op)."""


@dataclass(frozen=True, kw_only=True)
class Artifact:
    name: str
    size: int
    chunks: int
    digest: str
    written_at: str
    description: str | None = None
    first_seq: int = 1  # where its first chunk is in the stream: where a read starts looking

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Artifact:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("an artifact info is a JSON object")
        names.artifact_owner(str(raw.get("name")))
        return cls(name=str(raw["name"]), size=int(raw["size"]), chunks=int(raw["chunks"]),
                   digest=str(raw["digest"]), written_at=str(raw.get("written_at") or ""),
                   description=raw.get("description"), first_seq=max(1, int(raw.get("first_seq") or 1)))


def _nonce() -> str:
    return secrets.token_hex(8)


class ArtifactStore:
    """One write-once store (``results`` or ``checkpoints``), as every role uses it."""

    def __init__(self, *, js: JetStreamContext, store: str, timeout: float = direct.DEFAULT_TIMEOUT_S) -> None:
        self.js = js
        # nats-py's JetStreamContext keeps its connection private; its own ObjectStore reads it too.
        self.nc = js._nc
        self.store = store
        self.stream = names.ARTIFACT_STREAMS[store]
        self.timeout = timeout

    async def put(self, data: bytes, *, host: str, op_id: str, attempt: int,
                  description: str | None = None) -> Artifact:
        """Write ``data`` as a new artifact of ``op_id``'s ``attempt``, under ``host`` (the only host
        name this credential may write under). The chunks first, then the info that makes them one."""
        name = names.artifact_name(host, op_id, attempt, _nonce())
        view = memoryview(data)
        starts = range(0, max(1, len(data)), CHUNK_BYTES)
        # Chunks go out IN_FLIGHT at a time rather than each after the last one's acknowledgement:
        # a 10 MB sweep ranking is 80 chunks, and one round trip each was most of its write.
        # Published in order on one connection, they are stored in order; the info is written only
        # once every chunk is acknowledged, so a failed chunk leaves no artifact behind.
        flying: deque[asyncio.Task[PubAck]] = deque()
        seqs: list[int] = []
        try:
            for chunk, start in enumerate(starts):
                if len(flying) >= IN_FLIGHT:
                    seqs.append((await flying.popleft()).seq)
                flying.append(asyncio.ensure_future(self._publish(names.artifact_chunk(self.store, name, chunk),
                                                                  bytes(view[start:start + CHUNK_BYTES]))))
            while flying:
                seqs.append((await flying.popleft()).seq)
        finally:
            for task in flying:
                task.cancel()
            await asyncio.gather(*flying, return_exceptions=True)  # a failure after the first: not left unread
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            # A reader scans from the first chunk's sequence, in order: never the case on one connection.
            raise RuntimeError(f"artifact {self.store}/{name}: chunks stored out of order ({seqs[:8]}...)")
        chunks, first_seq = len(seqs), seqs[0]
        artifact = Artifact(name=name, size=len(data), chunks=chunks, digest=digest_of(data),
                            written_at=datetime.now(UTC).isoformat(), first_seq=first_seq,
                            description=None if description is None else bounded_text(description, MAX_ERROR_CHARS))
        await self._publish(names.artifact_info(self.store, name), artifact.encode())
        return artifact

    async def _publish(self, subject: str, payload: bytes) -> PubAck:
        try:
            return await self.js.publish(subject, payload, stream=self.stream)
        except APIError as exc:
            # The code a full store answers with too: "maximum messages per subject exceeded" is the
            # one that means written already.
            if exc.err_code == JS_STORE_REFUSED and "per subject" in (exc.description or ""):
                raise ArtifactExists(f"{subject} is written already: an artifact is never replaced") from None
            raise

    async def info(self, name: str) -> Artifact | None:
        """The artifact's info, or None when there is none by that name."""
        try:
            stored = await self.js.get_last_msg(self.stream, names.artifact_info(self.store, name), direct=True)
        except nats.errors.NoRespondersError:
            raise ArtifactMissing(f"there is no {self.stream} stream") from None
        except NotFoundError:
            return None
        try:
            artifact = Artifact.decode(stored.data or b"")
        except (ValueError, TypeError, KeyError, names.InvalidToken) as exc:
            raise DigestMismatch(f"artifact {self.store}/{name} has an unreadable info: {exc}") from None
        if artifact.name != name:
            raise DigestMismatch(f"artifact {self.store}/{name} has the info of {artifact.name}")
        return artifact

    async def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The artifact's bytes, checked against its digest. ``max_bytes``: refused, unread, when larger."""
        artifact = await self.info(name)
        if artifact is None:
            raise ArtifactMissing(f"no artifact {self.store}/{name}")
        if max_bytes is not None and artifact.size > max_bytes:
            raise ObjectTooLarge(f"artifact {self.store}/{name} holds {artifact.size} bytes, more than the "
                                 f"{max_bytes} accepted")
        data = await self._chunks(artifact)
        if len(data) != artifact.size or digest_of(data) != artifact.digest:
            raise DigestMismatch(f"artifact {self.store}/{name} does not match its digest")
        return data

    async def _chunks(self, artifact: Artifact) -> bytes:
        page = max(1, min(direct.BATCH, BATCH_BYTES // CHUNK_BYTES))
        parts: list[bytes] = []
        async for stored in direct.scan(self.nc, self.stream, names.artifact_chunks(self.store, artifact.name),
                                        page=page, seq=artifact.first_seq, limit=artifact.chunks,
                                        timeout=self.timeout):
            # One subject per chunk, written in order: anything else is not this artifact.
            if stored.subject != names.artifact_chunk(self.store, artifact.name, len(parts)):
                raise DigestMismatch(f"artifact {self.store}/{artifact.name}: chunk {len(parts)} "
                                     f"arrived as {stored.subject[:200]}")
            parts.append(stored.data)
        if len(parts) != artifact.chunks:
            raise DigestMismatch(f"artifact {self.store}/{artifact.name} has {len(parts)} of its "
                                 f"{artifact.chunks} chunks")
        return b"".join(parts)

    async def list(self, *, op_id: str | None = None) -> list[Artifact]:
        """Every artifact (of ``op_id``, when given), oldest first; unreadable infos are skipped."""
        subject = names.artifacts_of_op(self.store, op_id)[0] if op_id else names.artifact_infos(self.store)
        out: list[Artifact] = []
        try:
            async for stored in direct.scan(self.nc, self.stream, subject, timeout=self.timeout):
                try:
                    out.append(Artifact.decode(stored.data))
                except (ValueError, TypeError, KeyError, names.InvalidToken):
                    log.warning("skipping an unreadable artifact info on %s", stored.subject[:200])
        except direct.NoStream:
            raise ArtifactMissing(f"there is no {self.stream} stream") from None
        return out


# --- the coordinator's (it alone may purge) ---------------------------------------------------

async def purge_artifact(js: JetStreamContext, store: str, name: str) -> None:
    """Delete one artifact, its chunks first (a reader then finds no info rather than no chunks)."""
    stream = names.ARTIFACT_STREAMS[store]
    try:
        await js.purge_stream(stream, subject=names.artifact_chunks(store, name))
        await js.purge_stream(stream, subject=names.artifact_info(store, name))
    except NotFoundError:
        pass


async def purge_op_artifacts(js: JetStreamContext, store: str, op_id: str) -> None:
    """Delete every artifact written for ``op_id``, by any host and attempt (retention, or the op's end)."""
    stream = names.ARTIFACT_STREAMS[store]
    infos, chunks = names.artifacts_of_op(store, op_id)
    try:
        await js.purge_stream(stream, subject=chunks)
        await js.purge_stream(stream, subject=infos)
    except NotFoundError:
        pass
