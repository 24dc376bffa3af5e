"""Object-store buckets read with direct gets and written with plain publishes.

The layout is nats-py's (and the ``nats`` CLI's): an object's chunks on ``$O.<bucket>.C.<nuid>``,
its info as JSON on ``$O.<bucket>.M.<base64 name>``, so ``nats obj ls``/``get`` and the
coordinator read the same objects. What differs is what a role needs to do it:

* nats-py's ``get`` and ``list`` make an ordered consumer, and its ``put`` of an existing name and
  ``delete`` purge the stream. A role that may create consumers can redirect stored messages
  anywhere (``ktrdr.runtime.direct``), and one that may purge can empty the whole store. Here a
  read is a direct get of the info and a batched direct get of the chunks; a write publishes
  chunks and then the info; a delete publishes a deleted info. No role but the coordinator needs
  ``CONSUMER.CREATE`` or ``STREAM.PURGE`` (``subjects.roles``).
* Chunks left behind by a replaced or deleted object are the coordinator's to purge
  (:func:`collect_orphans`, from its retention loop).
* Every read checks the SHA-256 digest the info names and may bound the size it accepts before
  reading a byte of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMetaOptions
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from ktrdr.runtime import direct
from subjects import names
from subjects.names import validate_token

log = logging.getLogger(__name__)

CHUNK_BYTES = 128 * 1024  # nats-py's and the nats CLI's default
# Chunks asked for in one batch: at most this many bytes of answers wait unread on the inbox.
BATCH_BYTES = 16 * 1024 * 1024


class ObjectTooLarge(ValueError):
    pass


class DigestMismatch(ValueError):
    """What arrived is not what the object's info says it is (replaced underneath, or corrupt)."""


def digest_of(data: bytes) -> str:
    """The digest as an object's info writes it (``SHA-256=<urlsafe base64>``)."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


class ObjectBucket:
    """One object store, as every role but the coordinator may use it."""

    def __init__(self, *, js: JetStreamContext, bucket: str, timeout: float = direct.DEFAULT_TIMEOUT_S) -> None:
        self.js = js
        # nats-py's JetStreamContext keeps its connection private; its own ObjectStore reads it too.
        self.nc = js._nc
        self.bucket = validate_token(bucket, what="bucket")
        self.stream = f"OBJ_{bucket}"
        self.timeout = timeout

    def meta_subject(self, name: str) -> str:
        return names.object_meta_subject(self.bucket, name)

    def chunk_subject(self, nuid: str) -> str:
        return names.object_chunks(self.bucket, nuid)

    async def info(self, name: str) -> ObjectInfo | None:
        """The object's info, or None when there is no such object (or it was deleted)."""
        try:
            stored = await self.js.get_last_msg(self.stream, self.meta_subject(name), direct=True)
        except nats.errors.NoRespondersError:
            raise BucketNotFoundError from None
        except NotFoundError:
            return None
        info = ObjectInfo.from_response(json.loads(stored.data or b"{}"))
        return None if info.deleted else info

    async def get(self, name: str, *, max_bytes: int | None = None, info: ObjectInfo | None = None) -> bytes:
        """The object's bytes, checked against its digest. ``max_bytes``: refused, unread, when larger.
        ``info``: the version read already (what arrives then matches it, or DigestMismatch)."""
        info = info or await self.info(name)
        if info is None:
            raise ObjectNotFoundError
        size = int(info.size or 0)
        if max_bytes is not None and size > max_bytes:
            raise ObjectTooLarge(f"object {self.bucket}/{name} holds {size} bytes, more than the {max_bytes} "
                                 "accepted")
        data = await self._chunks(info, name)
        if len(data) != size or (info.digest and digest_of(data) != info.digest):
            raise DigestMismatch(f"object {self.bucket}/{name} does not match its digest")
        return data

    async def _chunks(self, info: ObjectInfo, name: str) -> bytes:
        chunks = int(info.chunks or 0)
        if chunks == 0:
            return b""
        chunk_bytes = (info.options.max_chunk_size if info.options else None) or CHUNK_BYTES
        page = max(1, min(direct.BATCH, BATCH_BYTES // max(1, chunk_bytes)))
        parts = [stored.data async for stored in direct.scan(
            self.nc, self.stream, self.chunk_subject(str(info.nuid)), page=page, limit=chunks, timeout=self.timeout)]
        if len(parts) != chunks:
            raise DigestMismatch(f"object {self.bucket}/{name} has {len(parts)} of its {chunks} chunks")
        return b"".join(parts)

    async def list(self, *, include_deleted: bool = False) -> list[ObjectInfo]:
        """Every object (not deleted, unless asked), oldest write first."""
        out: list[ObjectInfo] = []
        try:
            async for stored in direct.scan(self.nc, self.stream, names.object_metas(self.bucket),
                                            timeout=self.timeout):
                try:
                    info = ObjectInfo.from_response(json.loads(stored.data))
                except (ValueError, TypeError, KeyError):
                    log.warning("skipping an unreadable object info on %s", stored.subject[:200])
                    continue
                if include_deleted or not info.deleted:
                    out.append(info)
        except direct.NoStream:
            raise BucketNotFoundError from None
        return out

    async def put(self, name: str, data: bytes, *, description: str | None = None,
                  headers: dict[str, str] | None = None) -> ObjectInfo:
        """Store ``data`` as ``name``: the chunks first, then the info that makes them the object."""
        nuid = self.nc._nuid.next().decode()
        subject = self.chunk_subject(nuid)
        view = memoryview(data)
        chunks = 0
        for start in range(0, len(data), CHUNK_BYTES):
            await self.js.publish(subject, bytes(view[start:start + CHUNK_BYTES]))
            chunks += 1
        info = ObjectInfo(name=name, bucket=self.bucket, nuid=nuid, size=len(data), chunks=chunks,
                          mtime=datetime.now(UTC).isoformat(), digest=digest_of(data), description=description,
                          headers=headers, options=ObjectMetaOptions(max_chunk_size=CHUNK_BYTES))
        # The rollup keeps one info per name; the chunks of a replaced object are left for the
        # coordinator (collect_orphans), since purging them would need the right to purge it all.
        await self.js.publish(self.meta_subject(name), json.dumps(info.as_dict()).encode(),
                              headers={Header.ROLLUP: "sub"})
        return info

    async def delete(self, name: str) -> None:
        """Mark ``name`` deleted; its chunks are the coordinator's to purge. Absent: nothing to do."""
        info = await self.info(name)
        if info is None:
            return
        info.deleted, info.size, info.chunks, info.digest = True, 0, 0, None
        info.mtime = datetime.now(UTC).isoformat()
        await self.js.publish(self.meta_subject(name), json.dumps(info.as_dict()).encode(),
                              headers={Header.ROLLUP: "sub"})


async def collect_orphans(js: JetStreamContext, bucket: str, *, suspects: set[str],
                          keep: set[str] | None = None) -> set[str]:
    """Purge chunk subjects no object's info names (the coordinator's job: it alone may purge).

    A chunk subject is only purged when it was an orphan on the previous call too (``suspects``,
    what that call returned): an upload under way has its chunks stored before its info, and
    calls are far enough apart (the retention interval) for any upload to finish in between.
    Returns this call's orphans, to pass to the next. ``keep``: chunk subjects (nuids) that are
    never orphans, whatever the infos say (the registered model versions' bytes).
    """
    objects = ObjectBucket(js=js, bucket=bucket)
    live: set[str] = set()
    async for stored in direct.scan(objects.nc, objects.stream, names.object_metas(bucket)):
        try:
            meta = json.loads(stored.data)
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("nuid") and not meta.get("deleted"):
            live.add(str(meta["nuid"]))
    live |= keep or set()
    info = await js.stream_info(objects.stream, subjects_filter=names.object_chunks(bucket))
    prefix = names.object_chunks(bucket).removesuffix(">")
    orphans = {s[len(prefix):] for s in (info.state.subjects or {}) if s[len(prefix):] not in live}
    for nuid in orphans & suspects:
        await js.purge_stream(objects.stream, subject=objects.chunk_subject(nuid))
    if orphans & suspects:
        log.info("purged the chunks of %d replaced or deleted objects from %s", len(orphans & suspects), bucket)
    return orphans - suspects
