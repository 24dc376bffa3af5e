"""Who may publish and subscribe to what: the roles of the wire contract, enforced by nats-server.

Each role is a permission block of the server config that ``ktrdr up`` writes
(``ktrdr.security.serverconf``). Everything a role's block does not allow, the server refuses:
denial is the server's, never politeness in our code. The blocks are built from the names in
:mod:`subjects.names`, so a new bucket or subject has to be given to the roles that use it here.

A role's private reply inboxes live under its own prefix (:func:`inbox_prefix`): with the shared
``_INBOX.>`` one connection could read the replies (PubAcks, fetched jobs, key-value reads) meant
for another. Only ``client`` and ``viewer`` may also use ``_INBOX.>``, so the stock ``nats`` CLI
works with their credentials; no other role's replies travel there.

JetStream acts on a role's behalf where subject permissions never look: a consumer's
``deliver_subject`` is not checked against its creator's permissions (nats-server issue 8274), a
consumer-create uses up the stream's consumer limit, a consumer-delete removes anyone's, and a
purge empties a whole store. So no role but the coordinator (and the ``operator``, the people
who inspect the platform with the ``nats`` CLI) may create, delete or purge anything: the others
read streams with direct gets (``ktrdr.runtime.direct``), pull jobs from durable consumers the
coordinator provisions (``CONSUMER.MSG.NEXT`` only), follow live data with core subscriptions,
and write objects with plain publishes (``ktrdr.runtime.objects``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from subjects import names

COORDINATOR: Final = "coordinator"
# People inspecting the platform with the `nats` CLI (`nats stream info`, `nats kv ls`, `nats sub`):
# trusted as the coordinator is, and like it never handed to another host.
OPERATOR: Final = "operator"
WORKER: Final = "worker"
IB: Final = "ib"
CLIENT: Final = "client"
VIEWER: Final = "viewer"
ROLES: Final = (COORDINATOR, OPERATOR, WORKER, IB, CLIENT, VIEWER)
# Roles whose credential never leaves the coordinator's host (`ktrdr fleet invite` refuses them).
TRUSTED: Final = (COORDINATOR, OPERATOR)
# The hosts `ktrdr up` runs on its own machine, whose keys are the worker.nk and ib.nk role files.
LOCAL_HOST: Final = "local"
LOCAL_IB_HOST: Final = "local-ib"

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


def _direct_read(stream: str) -> list[str]:
    """Binding to a stream and reading it with direct gets: by subject and in batches. Nothing
    here makes a consumer, so nothing here can make the server deliver anywhere."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]


def _kv_read(bucket: str) -> list[str]:
    # MSG.GET: a key-value handle bound before its bucket allowed direct gets still reads that way.
    stream = names.kv_stream(bucket)
    return [*_direct_read(stream), f"{API}.STREAM.MSG.GET.{stream}"]


def _kv_write(bucket: str, keys: str = ">") -> list[str]:
    return [f"$KV.{bucket}.{keys}"]


def _obj_read(bucket: str) -> list[str]:
    return _direct_read(f"OBJ_{bucket}")


def _obj_write(bucket: str) -> list[str]:
    # Chunks and infos only: a replaced object's old chunks are the coordinator's to purge.
    return [*_obj_read(bucket), f"$O.{bucket}.>"]


def _artifacts_write(store: str, host: str) -> list[str]:
    # Only under its own host name: no host writes, or takes first, a name another's worker will.
    return [*_direct_read(names.ARTIFACT_STREAMS[store]), *names.artifacts_of_host(store, host)]


def _pull(capabilities: tuple[str, ...]) -> list[str]:
    allowed: list[str] = []
    for cap in capabilities:
        consumer = names.jobs_consumer(cap)
        allowed += [names.jobs_pull_subject(cap), f"$JS.ACK.{names.JOBS_STREAM}.{consumer}.>"]
    return allowed


def _own_inbox(public_key: str) -> list[str]:
    return [f"{inbox_prefix(public_key)}.>"]


def _worker_common(host: str) -> tuple[str, ...]:
    """What every worker-like process does: register, keep a lease, claim, report, read the op record
    it runs (fencing), read market data and write results and checkpoints. Registration, leases,
    reports and artifacts only under its own host's name, so that no host can pose as another's worker."""
    return (
        names.worker_register(host),
        *_kv_read(names.WORKERS_BUCKET), *_kv_write(names.WORKERS_BUCKET, f"{host}.>"),
        *_kv_read(names.CLAIMS_BUCKET), *_kv_write(names.CLAIMS_BUCKET),
        *_kv_read(names.OPS_BUCKET), *_kv_read(names.MODEL_PINS_BUCKET),
        names.ops_progress_from(host), names.ops_events_from(host),
        *_obj_read(names.DATA_OBJECTS),
        *_artifacts_write(names.RESULTS_ARTIFACTS, host),
        *_artifacts_write(names.CHECKPOINTS_ARTIFACTS, host),
    )


# Which jobs a role pulls follows from where each capability says it runs, the tail of its name
# ("<kind>.<where>", subjects.names): a worker's CPUs or GPUs, the IB host, or either. A new
# capability is its line in subjects.names, and no line here.
_WHERE: Final = {WORKER: ("cpu", "gpu", "any"), IB: ("ib", "any")}


def capabilities_of(role: str) -> tuple[str, ...]:
    """The capabilities whose jobs ``role`` may pull (none for a role that runs no jobs)."""
    return tuple(c for c in names.CAPABILITIES if c.rsplit(".", 1)[-1] in _WHERE.get(role, ()))


WORKER_CAPABILITIES: Final = capabilities_of(WORKER)
IB_CAPABILITIES: Final = capabilities_of(IB)

# Reading the platform's state, as the CLI, the API's users and dashboards do.
_READ: Final = (
    f"{names.SERVICE_GROUP}.{names.SERVICE_GET}", f"{names.SERVICE_GROUP}.{names.SERVICE_LIST}",
    names.ib_subject(names.IB_STATUS),
    "$SRV.PING", "$SRV.PING.>", "$SRV.INFO", "$SRV.INFO.>", "$SRV.STATS", "$SRV.STATS.>",
    f"{API}.INFO",
    *_kv_read(names.WORKERS_BUCKET), *_kv_read(names.OPS_BUCKET), *_kv_read(names.MODEL_PINS_BUCKET),
    *_direct_read(names.RESULTS_STREAM), *_obj_read(names.MODELS_OBJECTS), *_obj_read(names.DATA_OBJECTS),
    # Results from before they were artifacts, for the records that still name none.
    *_obj_read(names.RESULTS_OBJECTS),
)


def permissions(role: str, public_key: str, *, gpu: bool = True, host: str | None = None) -> Permissions:
    """The permission block of ``role`` for the credential whose nkey is ``public_key``. For a worker
    or IB host: ``host``, its name (default: this machine's, ``local``/``local-ib``), and ``gpu``,
    whether it may pull GPU training jobs (``ktrdr fleet invite worker --gpu``)."""
    inbox = _own_inbox(public_key)
    if role in TRUSTED:
        # The trust root: it creates and repairs every stream, consumer and bucket, writes every
        # record, offers every job and answers the services. Only the server's system account
        # is out of its reach.
        return Permissions(publish=(">",), subscribe=(">",), allow_responses=True,
                           deny_publish=("$SYS.>",), deny_subscribe=("$SYS.>",))
    if role == WORKER:
        return Permissions(
            publish=(*_worker_common(host or LOCAL_HOST), *_pull(tuple(c for c in WORKER_CAPABILITIES
                                                   if gpu or not c.endswith(".gpu"))),
                     *_obj_write(names.MODELS_OBJECTS)),
            # Cancels come forwarded by the coordinator, and only for this host's workers: a stolen
            # key hears neither other hosts' cancels nor anyone's cancel requests.
            subscribe=(*inbox, names.worker_cancels_of(host or LOCAL_HOST)), allow_responses=True)
    if role == IB:
        return Permissions(
            publish=(*_worker_common(host or LOCAL_IB_HOST), *_pull(IB_CAPABILITIES), *_obj_write(names.DATA_OBJECTS),
                     *_kv_read(names.IB_ACTIVE_BUCKET), *_kv_write(names.IB_ACTIVE_BUCKET)),
            # Its micro service: the endpoints and the $SRV discovery subjects.
            subscribe=(*inbox, names.worker_cancels_of(host or LOCAL_IB_HOST), f"{names.IB_SERVICE_GROUP}.>",
                       "$SRV.>"),
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
