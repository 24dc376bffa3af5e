"""A three-node JetStream cluster with roles and TLS (as in nats/cluster/secure/): losing one node
loses no operation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import nats
from coordinator.app import Coordinator
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.topology import OBJECT_STORES, ensure_topology
from ktrdr.runtime.worker import Worker
from ktrdr.security.serverconf import render
from ktrdr.security.tls import TlsFiles, ensure_server_cert, server_names
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import ROOT, coordinator_settings, creds, fleet
from tests.support import assert_eventually, wait_status


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return ensure_server_cert(tmp_path / "tls", server_names())


@pytest.fixture
def cluster(tmp_path: Path, tls_files: TlsFiles) -> Iterator[list[NatsServer]]:
    """The shipped nats/cluster/secure/node.conf, three times on loopback, with the fleet.conf that
    `ktrdr fleet server-config` writes beside it."""
    routes = [free_port() for _ in range(3)]
    servers = []
    template = (ROOT / "nats" / "cluster" / "secure" / "node.conf").read_text()
    (tmp_path / "fleet.conf").write_text(render(credentials=fleet().credentials, tls=tls_files))
    for i, route in enumerate(routes):
        env = {"KTRDR_NODE_NAME": f"n{i}", "KTRDR_NODE_LISTEN": "127.0.0.1:0",
               "KTRDR_NODE_CLUSTER": f"127.0.0.1:{route}", "KTRDR_NODE_STORE": str(tmp_path / f"store{i}"),
               **{f"KTRDR_ROUTE_{j + 1}": f"nats-route://127.0.0.1:{r}" for j, r in enumerate(routes)}}
        # NatsServer's own flags pick the client port; the rest is the shipped file.
        # Three hosts would each have their own 8222; here the nodes share one.
        conf = tmp_path / f"node{i}.conf"
        conf.write_text(template.replace("http: 127.0.0.1:8222", f"http: 127.0.0.1:{free_port()}"))
        servers.append(NatsServer(store_dir=tmp_path / f"store{i}", config_file=conf,
                                  name=f"n{i}", env=env, store_in_config=True))
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


async def test_streams_buckets_and_object_stores_made_with_one_replica_are_raised_to_the_setting(
        cluster: list[NatsServer], tls_files: TlsFiles) -> None:
    urls = ",".join(_url(s) for s in cluster)
    await assert_eventually(lambda: _jetstream_ready(_url(cluster[0]), tls_files.ca), timeout=30, interval=0.2,
                            message="the cluster elected no JetStream leader")
    nc = await nats.connect(urls.split(","), **NatsAuth(credential=fleet().credentials[roles.COORDINATOR],
                                                        ca=tls_files.ca).options())
    try:
        js = nc.jetstream(timeout=10)
        await ensure_topology(js, lease_ttl_s=5.0, replicas=1)
        await ensure_topology(js, lease_ttl_s=5.0, replicas=3)
        streams = [names.JOBS_STREAM, names.OPS_STREAM, *(names.kv_stream(b) for b in (
            names.WORKERS_BUCKET, names.OPS_BUCKET, names.CLAIMS_BUCKET, names.IB_ACTIVE_BUCKET)),
            *(f"OBJ_{b}" for b in OBJECT_STORES)]
        assert {s: (await js.stream_info(s)).config.num_replicas for s in streams} == dict.fromkeys(streams, 3)
    finally:
        await nc.close()


async def test_the_cli_takes_the_three_url_setting(cluster: list[NatsServer], tls_files: TlsFiles,
                                                   tmp_path: Path) -> None:
    urls = ",".join(_url(s) for s in cluster)
    await assert_eventually(lambda: _jetstream_ready(_url(cluster[0]), tls_files.ca), timeout=30, interval=0.2,
                            message="the cluster elected no JetStream leader")
    coordinator = Coordinator(settings=coordinator_settings(urls, js_replicas=3, nats_ca=tls_files.ca))
    await coordinator.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")} | {
            "KTRDR_HOME": str(tmp_path), "KTRDR_NATS_URL": urls, "KTRDR_NATS_CREDS": str(creds(roles.CLIENT)),
            "KTRDR_NATS_CA": str(tls_files.ca)}
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ktrdr.cli.app", "ops", "list",
                                                        "--json"], cwd=ROOT, env=env, capture_output=True,
                                       text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        await coordinator.stop()
