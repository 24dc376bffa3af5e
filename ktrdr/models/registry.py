"""The model registry: versioned model bundles in the JetStream Object Store bucket ``models``.

Each version is one object named ``<name>/<version>`` (versions count from 1); its metadata
(JSON: where it came from, its metrics) rides in the object's description, so listing the
registry reads no bundle. A new version number is reserved atomically before the upload: the
first meta message on the version's subject is published with an expected last subject sequence
of 0, so two trainings finishing at once never get the same version.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import Header, ObjectMeta
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError
from nats.js.object_store import ObjectStore

from subjects.names import MODELS_OBJECTS, object_meta_subject
from subjects.training import validate_model_name

log = logging.getLogger(__name__)

# JetStream's error codes of a failed expected-last-sequence check (10164: on a replicated stream,
# another write of the subject still in flight).
_WRONG_LAST_SEQUENCE = (10071, 10164)
_RESERVE_TRIES = 20


class ModelNotFoundError(LookupError):
    pass


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


async def models_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket the coordinator made (``ensure_topology``); nobody else may create it."""
    try:
        return await js.object_store(MODELS_OBJECTS)
    except BucketNotFoundError:
        raise ModelNotFoundError("the model registry has no bucket yet (is the coordinator running?)") from None


async def _all_infos(bucket: ObjectStore) -> list[Any]:
    try:
        return list(await bucket.list(ignore_deletes=False))
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


async def _reserve(js: JetStreamContext, bucket: ObjectStore, name: str, first: int) -> int:
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
    bucket = await models_bucket(js)
    taken = [v for info in await _all_infos(bucket)
             if (parsed := _split_object_name(info.name or "")) and parsed[0] == name for v in [parsed[1]]]
    version = await _reserve(js, bucket, name, max(taken, default=0) + 1)
    meta = {**metadata, "name": name, "version": version,
            "created_at": metadata.get("created_at") or datetime.now(UTC).isoformat()}
    object_name = _object_name(name, version)
    await bucket.put(object_name, bundle_bytes,
                     meta=ObjectMeta(name=object_name, description=json.dumps(meta, default=str)))
    log.info("stored model %s@%d (%d bytes)", name, version, len(bundle_bytes))
    return version


async def list_models(js: JetStreamContext) -> list[ModelVersion]:
    """Every stored version, by name then version."""
    try:
        bucket = await models_bucket(js)
    except ModelNotFoundError:
        return []
    found = [v for info in await _all_infos(bucket) if (v := _to_version(info)) is not None]
    return sorted(found, key=lambda v: (v.name, v.version))


async def show_model(js: JetStreamContext, name: str, version: int | str | None = None) -> ModelVersion:
    """One version's record (the latest when ``version`` is None)."""
    validate_model_name(name)
    version = _as_version(version)
    versions = [v for v in await list_models(js) if v.name == name]
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r}")
    if version is None:
        return versions[-1]
    for v in versions:
        if v.version == version:
            return v
    raise ModelNotFoundError(f"model {name!r} has no version {version} (versions: "
                             + ", ".join(str(v.version) for v in versions) + ")")


async def load_model(js: JetStreamContext, name: str, version: int | str | None = None) -> bytes:
    """The bundle bytes of ``name@version`` (the latest when ``version`` is None)."""
    found = await show_model(js, name, version)
    bucket = await models_bucket(js)
    try:
        result = await bucket.get(_object_name(found.name, found.version))
    except NotFoundError:
        raise ModelNotFoundError(f"model {found.ref} vanished while loading") from None
    return bytes(result.data or b"")
