"""Who may publish and subscribe to what: the roles of the wire contract, enforced by nats-server.

Each role is a permission block of the server config that ``ktrdr up`` writes
(``ktrdr.security.serverconf``). Everything a role's block does not allow, the server refuses:
denial is the server's, never politeness in our code. The blocks are built from the names in
:mod:`subjects.names`, so a new bucket or subject has to be given to the roles that use it here.

A role's private reply inboxes live under its own prefix (:func:`inbox_prefix`): with the shared
``_INBOX.>`` one connection could read the replies (PubAcks, fetched jobs, key-value reads) meant
for another. Only ``client`` and ``viewer`` may also use ``_INBOX.>``, so the stock ``nats`` CLI
works with their credentials; no other role's replies travel there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from subjects import names

COORDINATOR: Final = "coordinator"
WORKER: Final = "worker"
IB: Final = "ib"
CLIENT: Final = "client"
VIEWER: Final = "viewer"
ROLES: Final = (COORDINATOR, WORKER, IB, CLIENT, VIEWER)

API: Final = names.JS_API_PREFIX
DEFAULT_INBOX: Final = "_INBOX"


def inbox_prefix(public_key: str) -> str:
    """The reply-inbox prefix of the credential whose nkey is ``public_key`` (``U...``)."""
    return f"_INBOX_{public_key[1:17]}"


@dataclass(frozen=True, kw_only=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # A responder may publish once to the reply subject of a request it received.
    allow_responses: bool = False
    deny_publish: tuple[str, ...] = field(default=())
    deny_subscribe: tuple[str, ...] = field(default=())


def _kv_read(bucket: str, *, watch: bool = False) -> list[str]:
    stream = names.kv_stream(bucket)
    allowed = [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}", f"{API}.DIRECT.GET.{stream}",
               f"{API}.DIRECT.GET.{stream}.>"]
    if watch:  # keys(), watch() and history() make an ordered (non-durable) consumer
        allowed += _ordered_consumer(stream)
    return allowed


def _ordered_consumer(stream: str) -> list[str]:
    """What an ordered push consumer (a KV watch, an object-store get) needs. It must answer the
    server's flow-control requests on ``$JS.FC``: refused, a busy watch or a large download stalls."""
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.*", f"{API}.CONSUMER.DELETE.{stream}.*", f"$JS.FC.{stream}.>"]


def _kv_write(bucket: str, keys: str = ">") -> list[str]:
    return [f"$KV.{bucket}.{keys}"]


def _obj_read(bucket: str) -> list[str]:
    stream = f"OBJ_{bucket}"
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}", f"{API}.STREAM.NAMES",
            *_ordered_consumer(stream)]


def _obj_write(bucket: str) -> list[str]:
    return [*_obj_read(bucket), f"$O.{bucket}.>", f"{API}.STREAM.PURGE.OBJ_{bucket}"]


def _pull(capabilities: tuple[str, ...]) -> list[str]:
    allowed: list[str] = []
    for cap in capabilities:
        consumer = names.jobs_consumer(cap)
        allowed += [names.jobs_pull_subject(cap), f"$JS.ACK.{names.JOBS_STREAM}.{consumer}.>"]
    return allowed


def _own_inbox(public_key: str) -> list[str]:
    return [f"{inbox_prefix(public_key)}.>"]


# What every worker-like process does: register, keep a lease, claim, report, read the op
# record it runs (fencing), read market data and write results and checkpoints.
_WORKER_COMMON: Final = (
    names.WORKER_REGISTER,
    *_kv_read(names.WORKERS_BUCKET), *_kv_write(names.WORKERS_BUCKET),
    *_kv_read(names.CLAIMS_BUCKET), *_kv_write(names.CLAIMS_BUCKET),
    *_kv_read(names.OPS_BUCKET),
    names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL,
    *_obj_read(names.DATA_OBJECTS),
    *_obj_write(names.RESULTS_OBJECTS),
    *_obj_write(names.CHECKPOINTS_OBJECTS),
)

WORKER_CAPABILITIES: Final = (names.CAP_BACKTEST_CPU, names.CAP_TRAINING_CPU, names.CAP_TRAINING_GPU,
                              names.CAP_DUMMY_ANY)
IB_CAPABILITIES: Final = (names.CAP_DATA_IB, names.CAP_DUMMY_ANY)

# Reading the platform's state, as the CLI, the API's users and dashboards do.
_READ: Final = (
    f"{names.SERVICE_GROUP}.{names.SERVICE_GET}", f"{names.SERVICE_GROUP}.{names.SERVICE_LIST}",
    names.ib_subject(names.IB_STATUS),
    "$SRV.PING", "$SRV.PING.>", "$SRV.INFO", "$SRV.INFO.>", "$SRV.STATS", "$SRV.STATS.>",
    f"{API}.INFO",
    *_kv_read(names.WORKERS_BUCKET, watch=True), *_kv_read(names.OPS_BUCKET, watch=True),
    *_obj_read(names.RESULTS_OBJECTS), *_obj_read(names.MODELS_OBJECTS), *_obj_read(names.DATA_OBJECTS),
)


def permissions(role: str, public_key: str) -> Permissions:
    """The permission block of ``role`` for the credential whose nkey is ``public_key``."""
    inbox = _own_inbox(public_key)
    if role == COORDINATOR:
        # The trust root: it creates and repairs every stream, consumer and bucket, writes every
        # record, offers every job and answers the services. Only the server's system account
        # is out of its reach.
        return Permissions(publish=(">",), subscribe=(">",), allow_responses=True,
                           deny_publish=("$SYS.>",), deny_subscribe=("$SYS.>",))
    if role == WORKER:
        return Permissions(
            publish=(*_WORKER_COMMON, *_pull(WORKER_CAPABILITIES), *_obj_write(names.MODELS_OBJECTS)),
            subscribe=(*inbox, names.OPS_CANCEL_ALL), allow_responses=True)
    if role == IB:
        return Permissions(
            publish=(*_WORKER_COMMON, *_pull(IB_CAPABILITIES), *_obj_write(names.DATA_OBJECTS),
                     *_kv_read(names.IB_ACTIVE_BUCKET), *_kv_write(names.IB_ACTIVE_BUCKET)),
            # Its micro service: the endpoints and the $SRV discovery subjects.
            subscribe=(*inbox, names.OPS_CANCEL_ALL, f"{names.IB_SERVICE_GROUP}.>", "$SRV.>"),
            allow_responses=True)
    if role == CLIENT:
        return Permissions(
            publish=(*_READ, f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", names.OPS_CANCEL_ALL,
                     f"{names.SERVICE_GROUP}.{names.SERVICE_PRUNE}",
                     *(names.ib_subject(e) for e in names.IB_ENDPOINTS), *_obj_write(names.DATA_OBJECTS)),
            subscribe=(*inbox, f"{DEFAULT_INBOX}.>", names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL))
    if role == VIEWER:
        return Permissions(publish=_READ,
                           subscribe=(*inbox, f"{DEFAULT_INBOX}.>", names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL))
    raise ValueError(f"unknown role {role!r}; known: {', '.join(ROLES)}")
