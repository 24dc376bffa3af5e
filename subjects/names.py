"""Every subject, stream, consumer, bucket and service name of ktrdr: the wire contract.

Users type these into the ``nats`` CLI, so they are part of the product. Nothing outside this
package spells a subject; everything builds them with the helpers below, which validate every
id that becomes a subject token.
"""

from __future__ import annotations

import base64
import re
from typing import Final

# Worker registration (request-reply; the coordinator answers with a RegistrationAck), on
# ``worker.register.<host>``: the host whose key may publish there (subjects.roles) is the one the
# coordinator attributes the worker to.
WORKER_REGISTER: Final = "worker.register"
WORKER_REGISTER_ALL: Final = "worker.register.*"
# The host token of a subject any host may have published on: what followers subscribe with.
ANY_HOST: Final = "*"

# Key-value buckets.
WORKERS_BUCKET: Final = "workers"  # one lease key per worker id
OPS_BUCKET: Final = "ops"  # the durable record of every operation; the coordinator is its only writer
CLAIMS_BUCKET: Final = "claims"  # key "<op_id>_<attempt>": kv.create is the arbiter of ownership
# The IB host's active-instance lock: TTL + limit markers; kv.create (or a compare-and-set over an
# expiry marker) elects the one host that talks to IB; the active host refreshes it.
IB_ACTIVE_BUCKET: Final = "ib_active"
IB_ACTIVE_KEY: Final = "active"
# The digest of every registered model version, written once by the coordinator when the training
# that made it completes (ktrdr.models.registry.register_model); a load checks the bundle against it.
MODEL_PINS_BUCKET: Final = "model_pins"

# Object stores.
DATA_OBJECTS: Final = "data"  # market-data datasets, cached by digest on every worker
MODELS_OBJECTS: Final = "models"  # versioned trained-model bundles
# Before results were write-once artifacts (below) they were objects under the op id here: still
# read for the records that name no artifact, and deleted with them; nothing writes there now.
RESULTS_OBJECTS: Final = "results"

# Write-once artifacts (ktrdr.runtime.artifacts): full operation results and checkpoints. An
# artifact is named ``<host>.<op_id>.<attempt>.<nonce>``; its info is stored on
# ``<store>.m.<name>`` and its chunks on ``<store>.c.<name>.<n>``, one subject each, in a stream
# that keeps one message per subject and refuses a second: once written, no credential replaces
# it, and a host's key may write only under its own name (subjects.roles). The op record names
# the artifact its claimant reported (``Operation.result_object``, ``Operation.checkpoint``).
RESULTS_STREAM: Final = "RESULTS"
CHECKPOINTS_STREAM: Final = "CHECKPOINTS"
RESULTS_ARTIFACTS: Final = "results"
CHECKPOINTS_ARTIFACTS: Final = "checkpoints"
ARTIFACT_STREAMS: Final = {RESULTS_ARTIFACTS: RESULTS_STREAM, CHECKPOINTS_ARTIFACTS: CHECKPOINTS_STREAM}
# The host token of the artifacts the coordinator writes (a parent's reduced result); no fleet
# host may take this name (ktrdr.security.hosts).
COORDINATOR_HOST: Final = "coordinator"

# Streams.
JOBS_STREAM: Final = "JOBS"  # work-queue retention: an acked job is gone; subjects: JOBS_SUBJECTS below
OPS_STREAM: Final = "OPS"  # progress and lifecycle events; never ops.*.cancel
# ``ops.<id>.progress.<host>`` and ``ops.<id>.events.<host>``: a host's key may publish only under its
# own name, so the coordinator knows which host an outcome came from and refuses one about another
# host's worker.
OPS_PROGRESS_ALL: Final = "ops.*.progress.*"
OPS_EVENTS_ALL: Final = "ops.*.events.*"
OPS_CANCEL_ALL: Final = "ops.*.cancel"
# A cancel the coordinator forwards to the one worker that holds the op's claim (coordinator.cancel):
# ``worker.cancel.<host>.<worker id>.<op id>``. Only the coordinator subscribes to ``ops.*.cancel``,
# so a cancel costs one delivery however large the fleet, not one per worker.
WORKER_CANCEL: Final = "worker.cancel"
# Op records past the retention period (coordinator.retention), one subject per op id; the
# coordinator alone reads and writes it, and serves it through its API and service.
OPS_ARCHIVE_STREAM: Final = "OPS_ARCHIVE"
OPS_ARCHIVE_ALL: Final = "archive.ops.>"

# The coordinator's durable push consumer of OPS and the subject it delivers to.
COORDINATOR_CONSUMER: Final = "coordinator"
COORDINATOR_DELIVER: Final = "ktrdr.coordinator.ops"

# The coordinator's NATS micro service (discoverable with `nats micro ls`).
SERVICE_NAME: Final = "ktrdr"
SERVICE_GROUP: Final = "ktrdr.ops"
SERVICE_SUBMIT: Final = "submit"
SERVICE_GET: Final = "get"
SERVICE_LIST: Final = "list"
SERVICE_PRUNE: Final = "prune"  # retention on demand: archive or delete ended ops older than an age

# The active IB host's NATS micro service: ``nats req ib.contract '{"symbol":"AAPL"}'``.
# Only the active host runs it, so exactly one instance answers.
IB_SERVICE_NAME: Final = "ktrdr-ib"
IB_SERVICE_GROUP: Final = "ib"
IB_CONTRACT: Final = "contract"  # contract details of a symbol
IB_HEAD: Final = "head"  # the earliest timestamp IB has data for
IB_BARS: Final = "bars"  # a small historical request, answered directly
IB_STATUS: Final = "status"  # connection, pacing budget, active instance
IB_ENDPOINTS: Final = (IB_CONTRACT, IB_HEAD, IB_BARS, IB_STATUS)


def ib_subject(endpoint: str) -> str:
    if endpoint not in IB_ENDPOINTS:
        raise InvalidToken(f"unknown IB endpoint {endpoint!r}; known: {', '.join(IB_ENDPOINTS)}")
    return f"{IB_SERVICE_GROUP}.{endpoint}"


# JetStream advisory sent when a job message reaches MaxDeliver.
MAX_DELIVERIES_ADVISORY: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + JOBS_STREAM + ".*"

# Capabilities: "<kind>.<where>", the tail of a jobs subject. Which operation types run on which
# (and in what order of preference) is each type's declaration (ktrdr.optypes).
CAP_BACKTEST_CPU: Final = "backtest.cpu"
CAP_TRAINING_GPU: Final = "training.gpu"
CAP_TRAINING_CPU: Final = "training.cpu"
CAP_DATA_IB: Final = "data.ib"
CAP_DUMMY_ANY: Final = "dummy.any"

CAPABILITIES: Final = (CAP_BACKTEST_CPU, CAP_TRAINING_GPU, CAP_TRAINING_CPU, CAP_DATA_IB, CAP_DUMMY_ANY)
# What JOBS stores: exactly one subject per capability. A job on any other subject (no consumer
# would ever fetch it, no queue depth would show it) is refused instead of kept unseen for days.
JOBS_SUBJECTS: Final = tuple(f"jobs.{capability}" for capability in CAPABILITIES)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEY = re.compile(r"^[A-Za-z0-9_=-]{1,255}$")  # the keys we write: one subject token each


class InvalidToken(ValueError):
    pass


def validate_token(value: str, *, what: str = "id") -> str:
    """Accept only ids that are one subject token and a valid KV key: letters, digits, '_' and '-'."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidToken(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_' or '-' "
            "(no '.', '*', '>', spaces)")
    return value


def validate_capability(capability: str) -> str:
    if capability not in CAPABILITIES:
        raise InvalidToken(f"unknown capability {capability!r}; known: {', '.join(CAPABILITIES)}")
    return capability


def jobs_subject(capability: str) -> str:
    return "jobs." + validate_capability(capability)


def jobs_consumer(capability: str) -> str:
    """The durable pull consumer shared by every worker serving ``capability``."""
    return "jobs-" + validate_capability(capability).replace(".", "-")


JS_API_PREFIX: Final = "$JS.API"


def kv_key_subject(bucket: str, key: str) -> str:
    """The subject a key-value write to ``bucket``/``key`` is published on."""
    if not _KEY.match(key):
        raise InvalidToken(f"invalid key {key!r} for bucket {bucket}")
    return f"$KV.{validate_token(bucket, what='bucket')}.{key}"


def kv_all(bucket: str) -> str:
    """Every key of ``bucket`` (what a listing by direct gets, or the coordinator's watch, filters on)."""
    return f"$KV.{validate_token(bucket, what='bucket')}.>"


def object_chunks(bucket: str, nuid: str = ">") -> str:
    """An object's chunks in ``bucket`` (``$O.<bucket>.C.<nuid>``); every chunk subject by default."""
    return f"$O.{validate_token(bucket, what='bucket')}.C.{nuid if nuid == '>' else validate_token(nuid, what='nuid')}"


def object_metas(bucket: str) -> str:
    """Every object info of ``bucket``."""
    return f"$O.{validate_token(bucket, what='bucket')}.M.>"


def _artifact_store(store: str) -> str:
    if store not in ARTIFACT_STREAMS:
        raise InvalidToken(f"unknown artifact store {store!r}; known: {', '.join(ARTIFACT_STREAMS)}")
    return store


_NONCE = re.compile(r"^[0-9a-f]{8,32}$")


def artifact_name(host: str, op_id: str, attempt: int, nonce: str) -> str:
    """``<host>.<op_id>.<attempt>.<nonce>``: whose key wrote it, for which attempt, and which write."""
    if not _NONCE.match(nonce):
        raise InvalidToken(f"invalid artifact nonce {nonce!r}")
    return (f"{validate_token(host, what='host name')}.{validate_token(op_id, what='operation id')}."
            f"{int(attempt)}.{nonce}")


def artifact_owner(name: str) -> tuple[str, str, int]:
    """The host, op id and attempt an artifact name was written for; InvalidToken if it is not one."""
    parts = name.split(".") if isinstance(name, str) else []
    if len(parts) != 4 or not parts[2].isdigit() or not _NONCE.match(parts[3]):
        raise InvalidToken(f"not an artifact name: {str(name)[:200]!r}")
    return (validate_token(parts[0], what="host name"), validate_token(parts[1], what="operation id"),
            int(parts[2]))


def artifact_info(store: str, name: str) -> str:
    artifact_owner(name)
    return f"{_artifact_store(store)}.m.{name}"


def artifact_chunk(store: str, name: str, index: int) -> str:
    artifact_owner(name)
    return f"{_artifact_store(store)}.c.{name}.{int(index)}"


def artifact_chunks(store: str, name: str) -> str:
    """Every chunk of one artifact."""
    artifact_owner(name)
    return f"{_artifact_store(store)}.c.{name}.*"


def artifacts_of_host(store: str, host: str) -> tuple[str, str]:
    """The infos and chunks a host's key may write (and nothing else in ``store``)."""
    host = validate_token(host, what="host name")
    return f"{_artifact_store(store)}.m.{host}.>", f"{store}.c.{host}.>"


def artifacts_of_op(store: str, op_id: str) -> tuple[str, str]:
    """The infos and chunks of every artifact written for ``op_id``, by any host and attempt."""
    op_id = validate_token(op_id, what="operation id")
    return f"{_artifact_store(store)}.m.*.{op_id}.>", f"{store}.c.*.{op_id}.>"


def artifact_infos(store: str) -> str:
    return f"{_artifact_store(store)}.m.>"


def artifact_all_chunks(store: str) -> str:
    """Every chunk of every artifact in ``store``."""
    return f"{_artifact_store(store)}.c.>"


def artifact_of_chunk(store: str, subject: str) -> str:
    """The artifact name in a chunk subject (``<store>.c.<name>.<n>``); InvalidToken for anything else."""
    prefix = artifact_all_chunks(store).removesuffix(">")
    name, _, index = subject.removeprefix(prefix).rpartition(".")
    if not subject.startswith(prefix) or not index.isdigit():
        raise InvalidToken(f"not a chunk of {store}: {subject[:200]!r}")
    artifact_owner(name)
    return name


def artifact_of_info(store: str, subject: str) -> str:
    """The artifact name in an info subject (``<store>.m.<name>``); InvalidToken for anything else."""
    prefix = artifact_infos(store).removesuffix(">")
    if not subject.startswith(prefix):
        raise InvalidToken(f"not an info of {store}: {subject[:200]!r}")
    name = subject.removeprefix(prefix)
    artifact_owner(name)
    return name


def artifact_subjects(store: str) -> list[str]:
    """What the store's stream captures."""
    return [artifact_infos(store), artifact_all_chunks(store)]


def kv_stream(bucket: str) -> str:
    """The stream behind a key-value bucket (its sequence counts the bucket's writes)."""
    return f"KV_{validate_token(bucket, what='bucket')}"


def jobs_pull_subject(capability: str) -> str:
    """Where a worker sends its pull requests (JetStream's ``CONSUMER.MSG.NEXT``) for ``capability``."""
    return f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{JOBS_STREAM}.{jobs_consumer(capability)}"


def _host_token(host: str) -> str:
    return host if host == ANY_HOST else validate_token(host, what="host name")


def worker_register(host: str) -> str:
    return f"{WORKER_REGISTER}.{validate_token(host, what='host name')}"


def ops_progress(op_id: str, host: str) -> str:
    """Where ``host`` publishes the op's progress (``ANY_HOST``: what a follower subscribes to)."""
    return f"ops.{validate_token(op_id, what='operation id')}.progress.{_host_token(host)}"


def ops_events(op_id: str, host: str) -> str:
    """Where ``host`` publishes the op's lifecycle events (``ANY_HOST``: what a follower subscribes to)."""
    return f"ops.{validate_token(op_id, what='operation id')}.events.{_host_token(host)}"


def ops_progress_from(host: str) -> str:
    """Every op's progress as ``host`` publishes it: what its key may publish."""
    return f"ops.*.progress.{validate_token(host, what='host name')}"


def ops_events_from(host: str) -> str:
    return f"ops.*.events.{validate_token(host, what='host name')}"


def host_from_subject(subject: str) -> str:
    """The host token that ends ``ops.<id>.<verb>.<host>`` or ``worker.register.<host>``."""
    return validate_token(subject.rpartition(".")[2], what="host name")


def lease_key(host: str, worker_id: str) -> str:
    """The ``workers`` key of a lease: under its host, which alone may write there (subjects.roles)."""
    return f"{validate_token(host, what='host name')}.{validate_token(worker_id, what='worker id')}"


def split_lease_key(key: str) -> tuple[str, str]:
    """``(host, worker_id)`` of a lease key; InvalidToken for anything else."""
    host, _, worker_id = key.partition(".")
    return validate_token(host, what="host name"), validate_token(worker_id, what="worker id")


def ops_archive(op_id: str) -> str:
    return f"archive.ops.{validate_token(op_id, what='operation id')}"


def ops_cancel(op_id: str) -> str:
    return f"ops.{validate_token(op_id, what='operation id')}.cancel"


def worker_cancel(host: str, worker_id: str, op_id: str) -> str:
    """Where the coordinator forwards a cancel of ``op_id`` to its worker (``"*"``: every op of it)."""
    op = op_id if op_id == "*" else validate_token(op_id, what="operation id")
    return (f"{WORKER_CANCEL}.{validate_token(host, what='host name')}."
            f"{validate_token(worker_id, what='worker id')}.{op}")


def worker_cancels_of(host: str) -> str:
    """Every forwarded cancel for ``host``'s workers: what its key may subscribe to."""
    return f"{WORKER_CANCEL}.{validate_token(host, what='host name')}.>"


def op_id_from_worker_cancel(subject: str) -> str:
    """The operation id that ends ``worker.cancel.<host>.<worker>.<op>``; InvalidToken for anything else."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != WORKER_CANCEL:
        raise InvalidToken(f"not a forwarded cancel: {subject!r}")
    return validate_token(parts[4], what="operation id")


def op_id_from_subject(subject: str) -> str:
    """The operation id in ``ops.<id>.<verb>`` or ``ops.<id>.<verb>.<host>``; InvalidToken for anything else."""
    parts = subject.split(".")
    if len(parts) not in (3, 4) or parts[0] != "ops":
        raise InvalidToken(f"not an operation subject: {subject!r}")
    return validate_token(parts[1], what="operation id")


def claim_key(op_id: str, attempt: int) -> str:
    return f"{validate_token(op_id, what='operation id')}_{int(attempt)}"


def job_msg_id(op_id: str, attempt: int, capability: str, reoffer: int = 0) -> str:
    """Nats-Msg-Id of one offer: distinct per attempt and route, so a CPU fallback is not deduped,
    and per renewal of an offer that reached MaxDeliver unclaimed."""
    base = f"{validate_token(op_id, what='operation id')}:{int(attempt)}:{validate_capability(capability)}"
    return f"{base}:r{int(reoffer)}" if reoffer else base


def model_pin_key(name: str, version: int) -> str:
    """The ``model_pins`` key of ``name@version`` (a model name may hold '.', which a key token may not)."""
    return base64.urlsafe_b64encode(f"{name}@{int(version)}".encode()).decode()


def model_pin_ref(subject: str) -> tuple[str, int] | None:
    """``(name, version)`` of a ``model_pins`` key's subject, or None for a key no pin has."""
    key = subject.removeprefix(kv_all(MODEL_PINS_BUCKET).removesuffix(">"))
    try:
        name, _, version = base64.urlsafe_b64decode(key).decode().rpartition("@")
    except (ValueError, UnicodeDecodeError):
        return None
    return (name, int(version)) if name and version.isdigit() else None


def object_meta_subject(bucket: str, object_name: str) -> str:
    """The subject holding an Object Store object's metadata (``$O.<bucket>.M.<base64 name>``).

    The model registry publishes there once, with an expected last sequence of 0, to reserve a
    version number atomically before uploading it.
    """
    encoded = base64.urlsafe_b64encode(object_name.encode()).decode()
    return f"$O.{validate_token(bucket, what='bucket')}.M.{encoded}"
