"""The model registry: versioned model bundles in the JetStream Object Store bucket ``models``.

Each version is one object named ``<name>/<version>`` (versions count from 1); its metadata
(JSON: where it came from, its metrics) rides in the object's description, so listing the
registry reads no bundle. A new version number is reserved atomically before the upload: the
first meta message on the version's subject is published with an expected last subject sequence
of 0, so two trainings finishing at once never get the same version.

Whoever may save a model may also write over one (a worker, with a stolen credential), so a version
is only loaded as the coordinator registered it: when the training that saved it completes, the
coordinator writes the bundle's digest, once, to the ``model_pins`` bucket that only it may write
(:func:`register_model`), and :func:`load_model` refuses a bundle whose digest differs, or a version
nobody registered, naming the model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMetaOptions
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from ktrdr.runtime import direct
from ktrdr.runtime.objects import CHUNK_BYTES, DigestMismatch, ObjectBucket, digest_of
from ktrdr.runtime.retry import RetryPolicy
from subjects.names import (
    MODEL_PINS_BUCKET,
    MODELS_OBJECTS,
    kv_all,
    kv_stream,
    model_pin_key,
    model_pin_ref,
    object_meta_subject,
)
from subjects.training import validate_model_name

log = logging.getLogger(__name__)

# JetStream's error codes of a failed expected-last-sequence check (10164: on a replicated stream,
# another write of the subject still in flight).
_WRONG_LAST_SEQUENCE = (10071, 10164)
_RESERVE_TRIES = 20


class ModelNotFoundError(LookupError):
    pass


class ModelTampered(ValueError):
    """The bundle is not the one the coordinator registered, or it was never registered."""


# A load waits this long for the registration of a version whose training just completed (the
# coordinator registers it right after it records the completion).
PIN_WAIT = RetryPolicy(first_s=0.05, max_s=0.5, budget_s=5.0)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    size: int
    digest: str
    created_at: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **asdict(self)}


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION`` (``NAME@latest`` is ``NAME``)."""
    name, _, version = ref.partition("@")
    validate_model_name(name)
    if version in ("", "latest"):
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"invalid model version {version!r} in {ref!r}: use a number from 1")
    return name, int(version)


def _as_version(version: int | str | None) -> int | None:
    """None (latest), a number, or its text (``"3"``, ``"latest"``) as from ``NAME@VERSION``."""
    if version is None or isinstance(version, int):
        return version
    return parse_model_ref(f"model@{version}")[1]


def _object_name(name: str, version: int) -> str:
    return f"{validate_model_name(name)}/{int(version)}"


def _split_object_name(object_name: str) -> tuple[str, int] | None:
    name, _, version = object_name.rpartition("/")
    if not name or not version.isdigit():
        return None
    return name, int(version)


def models_bucket(js: JetStreamContext) -> ObjectBucket:
    """The bucket the coordinator made (``ensure_topology``), read and written without consumers."""
    return ObjectBucket(js=js, bucket=MODELS_OBJECTS)


_NO_BUCKET = "the model registry has no bucket yet (is the coordinator running?)"


async def _all_infos(bucket: ObjectBucket) -> list[Any]:
    try:
        return await bucket.list(include_deleted=True)
    except BucketNotFoundError:
        raise ModelNotFoundError(_NO_BUCKET) from None
    except NotFoundError:
        return []


def _to_version(info: Any) -> ModelVersion | None:
    parsed = _split_object_name(info.name or "")
    if parsed is None or info.deleted:
        return None
    try:
        metadata = json.loads(info.description or "{}")
    except json.JSONDecodeError:
        metadata = {}
    return ModelVersion(name=parsed[0], version=parsed[1], size=int(info.size or 0), digest=str(info.digest or ""),
                        created_at=str(metadata.get("created_at") or info.mtime or ""),
                        metadata=metadata if isinstance(metadata, dict) else {})


async def _reserve(js: JetStreamContext, name: str, first: int) -> int:
    """Claim the first free version >= ``first`` by creating its meta subject (a deleted stub)."""
    version = first
    for _ in range(_RESERVE_TRIES):
        object_name = _object_name(name, version)
        stub = {"name": object_name, "bucket": MODELS_OBJECTS, "nuid": "", "size": 0, "chunks": 0,
                "deleted": True, "description": "reserved"}
        try:
            await js.publish(object_meta_subject(MODELS_OBJECTS, object_name), json.dumps(stub).encode(),
                             headers={Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "0"})
            return version
        except APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            version += 1
    raise RuntimeError(f"could not reserve a version of model {name!r} after {_RESERVE_TRIES} tries")


async def save_model(js: JetStreamContext, name: str, bundle_bytes: bytes, metadata: dict[str, Any]) -> int:
    """Store ``bundle_bytes`` as the next version of ``name``; returns the version."""
    validate_model_name(name)
    bucket = models_bucket(js)
    taken = [v for info in await _all_infos(bucket)
             if (parsed := _split_object_name(info.name or "")) and parsed[0] == name for v in [parsed[1]]]
    version = await _reserve(js, name, max(taken, default=0) + 1)
    meta = {**metadata, "name": name, "version": version,
            "created_at": metadata.get("created_at") or datetime.now(UTC).isoformat()}
    object_name = _object_name(name, version)
    await bucket.put(object_name, bundle_bytes, description=json.dumps(meta, default=str))
    log.info("stored model %s@%d (%d bytes)", name, version, len(bundle_bytes))
    return version


async def list_models(js: JetStreamContext) -> list[ModelVersion]:
    """Every stored version, by name then version."""
    try:
        infos = await _all_infos(models_bucket(js))
    except ModelNotFoundError:
        return []
    found = [v for info in infos if (v := _to_version(info)) is not None]
    return sorted(found, key=lambda v: (v.name, v.version))


async def show_model(js: JetStreamContext, name: str, version: int | str | None = None) -> ModelVersion:
    """One version's record (the latest when ``version`` is None). A registered version whose info
    was deleted or written over since (only a stolen host key does that) is still found, from what
    the coordinator registered (without the bundle's metadata)."""
    validate_model_name(name)
    version = _as_version(version)
    versions = [v for v in await list_models(js) if v.name == name]
    pins = await _registered(js)
    registered = sorted(v for pinned, v in pins if pinned == name)
    if version is None and registered and (not versions or max(registered) > versions[-1].version):
        version = max(registered)
    if version is None and versions:
        return versions[-1]
    for v in versions:
        if v.version == version:
            return v
    pin = pins.get((name, version)) if version is not None else None
    if pin is not None:
        log.error("model %s@%d has no info in the bucket any more (deleted or written over after its training): "
                  "using what was registered", name, version)
        return ModelVersion(name=name, version=int(version), size=int(pin.get("size") or 0),  # type: ignore[arg-type]
                            digest=str(pin["digest"]), created_at=str(pin.get("registered_at") or ""), metadata={})
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r}")
    raise ModelNotFoundError(f"model {name!r} has no version {version} (versions: "
                             + ", ".join(str(v.version) for v in versions) + ")")


async def _registered(js: JetStreamContext) -> dict[tuple[str, int], dict[str, Any]]:
    """Every registered version's pin, by (name, version): one read of ``model_pins``."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        async for stored in direct.scan(js._nc, kv_stream(MODEL_PINS_BUCKET), kv_all(MODEL_PINS_BUCKET)):
            ref = model_pin_ref(stored.subject)
            try:
                pin = json.loads(stored.data or b"{}")
            except ValueError:
                continue
            if ref is not None and isinstance(pin, dict) and pin.get("digest"):  # a deleted key has no data
                found[ref] = pin
    except direct.NoStream:
        pass
    return found


async def register_model(js: JetStreamContext, name: str, version: int, *, op_id: str | None = None) -> str:
    """Record the digest of ``name@version`` as it is now (the coordinator's act, once per version);
    returns it. A version registered already keeps its first digest."""
    info = await models_bucket(js).info(_object_name(name, version))
    if info is None or not info.digest:
        raise ModelNotFoundError(f"model {name}@{version} is not stored")
    # Where its bytes are, too: a load reads those chunks whatever the bucket's info says later, and
    # the coordinator's sweep keeps them (an info written over or deleted leaves them unreferenced).
    pin = {"digest": info.digest, "size": int(info.size or 0), "op_id": op_id,
           "registered_at": datetime.now(UTC).isoformat(), "nuid": info.nuid, "chunks": int(info.chunks or 0),
           "chunk_size": (info.options.max_chunk_size if info.options else None) or CHUNK_BYTES}
    pins = await js.key_value(MODEL_PINS_BUCKET)
    try:
        await pins.create(model_pin_key(name, version), json.dumps(pin).encode())
    except KeyWrongLastSequenceError:
        current = await registered_digest(js, name, version)
        if current != info.digest:
            log.error("model %s@%d differs from the digest registered for it: it was written over", name, version)
        return current or info.digest
    log.info("registered model %s@%d (%s)", name, version, info.digest)
    return str(info.digest)


async def _pin(js: JetStreamContext, name: str, version: int) -> dict[str, Any] | None:
    try:
        entry = await (await js.key_value(MODEL_PINS_BUCKET)).get(model_pin_key(name, version))
    except KeyNotFoundError:
        return None
    pin = json.loads(entry.value or b"{}")
    return pin if isinstance(pin, dict) and pin.get("digest") else None


async def registered_digest(js: JetStreamContext, name: str, version: int) -> str | None:
    """The digest the coordinator registered for ``name@version``, or None."""
    pin = await _pin(js, name, version)
    return None if pin is None else str(pin["digest"])


async def pinned_nuids(js: JetStreamContext) -> set[str]:
    """Where every registered version's bytes are (the chunks no sweep may delete)."""
    return {str(pin["nuid"]) for pin in (await _registered(js)).values() if pin.get("nuid")}


async def load_model(js: JetStreamContext, name: str, version: int | str | None = None) -> bytes:
    """The bundle bytes of ``name@version`` (the latest when ``version`` is None), exactly as the
    coordinator registered them."""
    found = await show_model(js, name, version)

    async def pinned() -> dict[str, Any]:
        pin = await _pin(js, found.name, found.version)
        if pin is None:
            raise _NotRegisteredYet
        return pin

    try:
        pin = await PIN_WAIT.run(pinned, retry_on=lambda exc: isinstance(exc, _NotRegisteredYet))
    except _NotRegisteredYet:
        raise ModelTampered(f"model {found.ref} was never registered by the coordinator (did the training that "
                            "saved it complete?); it is not loaded") from None
    expected = str(pin["digest"])
    if pin.get("nuid"):
        # The bytes registered, read where they were: an info written over or deleted since (by a
        # stolen host key) changes nothing here; the digest still has the last word.
        info = ObjectInfo(name=_object_name(found.name, found.version), bucket=MODELS_OBJECTS, nuid=pin["nuid"],
                          size=int(pin.get("size") or 0), chunks=int(pin.get("chunks") or 0), digest=expected,
                          options=ObjectMetaOptions(max_chunk_size=int(pin.get("chunk_size") or CHUNK_BYTES)))
        try:
            bundle = await models_bucket(js).get(info.name, info=info)
        except DigestMismatch:
            raise ModelTampered(f"model {found.ref}: the bytes registered when it was trained are damaged; it is "
                                "not loaded") from None
        if found.digest and found.digest != expected:
            log.error("model %s was written over after its training; loading the bytes registered then", found.ref)
        return bundle
    fetched: bytes | None
    try:
        fetched = await models_bucket(js).get(_object_name(found.name, found.version))
    except NotFoundError:
        raise ModelNotFoundError(f"model {found.ref} vanished while loading") from None
    except DigestMismatch:
        fetched = None
    if fetched is None or digest_of(fetched) != expected:
        raise ModelTampered(f"model {found.ref} does not match the digest registered when it was trained: it was "
                            "written over after its training; it is not loaded")
    return fetched


class _NotRegisteredYet(LookupError):
    pass
