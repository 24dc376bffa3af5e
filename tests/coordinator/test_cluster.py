"""A three-node JetStream cluster with roles and TLS (as in nats/cluster/secure/): losing one node
loses no operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import nats
from coordinator.app import Coordinator
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from ktrdr.security.serverconf import render
from ktrdr.security.tls import TlsFiles, ensure_server_cert, server_names
from subjects import roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import coordinator_settings, creds, fleet
from tests.support import assert_eventually, wait_status


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return ensure_server_cert(tmp_path / "tls", server_names())


@pytest.fixture
def cluster(tmp_path: Path, tls_files: TlsFiles) -> Iterator[list[NatsServer]]:
    routes = [free_port() for _ in range(3)]
    servers = []
    # What `ktrdr fleet server-config` writes, included by each node as in nats/cluster/secure/.
    (tmp_path / "fleet.conf").write_text(render(credentials=fleet().credentials, tls=tls_files))
    for i, route in enumerate(routes):
        conf = tmp_path / f"n{i}.conf"
        conf.write_text(
            # The store dir comes from NatsServer's -sd flag.
            f"server_name: n{i}\njetstream: enabled\ninclude ./fleet.conf\n"
            f"cluster {{ name: ktrdr, listen: 127.0.0.1:{route}, tls: $tls, routes: ["
            + ", ".join(f"nats-route://127.0.0.1:{r}" for r in routes) + "] }\n")
        servers.append(NatsServer(store_dir=tmp_path / f"store{i}", config_file=conf, name=f"n{i}"))
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _url(server: NatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


async def _jetstream_ready(url: str, ca: Path) -> bool:
    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0,
                                **NatsAuth(credential=fleet().credentials[roles.COORDINATOR], ca=ca).options())
    except Exception:
        return False
    try:
        await nc.jetstream(timeout=1).account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def test_an_op_survives_the_loss_of_one_node_of_three(cluster: list[NatsServer], tls_files: TlsFiles) -> None:
    urls = ",".join(_url(s) for s in cluster)
    await assert_eventually(lambda: _jetstream_ready(_url(cluster[0]), tls_files.ca), timeout=30, interval=0.2,
                            message="the cluster elected no JetStream leader")
    # A lease longer than a leader election, so that losing a node does not look like losing the worker.
    lease = {"lease_ttl_s": 8.0, "heartbeat_s": 0.5}
    coordinator = Coordinator(settings=coordinator_settings(urls, js_replicas=3, nats_ca=tls_files.ca, **lease))
    await coordinator.start()
    try:
        worker = Worker(settings=WorkerSettings(nats_url=urls, nats_creds=creds(roles.WORKER), nats_ca=tls_files.ca,
                                                worker_id="w1", js_replicas=3, fetch_timeout_s=0.3, grace_s=1, **lease),
                        worker_type="test", capabilities=["dummy.any"], handlers={"dummy": run_dummy})
        await worker.start()
        try:
            op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 3, "steps": 6}))
            await wait_status(coordinator, op.op_id, OpStatus.RUNNING, timeout=15)
            cluster[0].kill()
            done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=45)
            assert done.worker_id == "w1" and done.result == {"steps": 6, "duration": 3.0}
            after = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
            await wait_status(coordinator, after.op_id, OpStatus.COMPLETED, timeout=45)
        finally:
            await worker.stop()
    finally:
        await coordinator.stop()
