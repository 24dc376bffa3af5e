"""A three-node JetStream cluster with roles and TLS (as in nats/cluster/secure/): losing one node
loses no operation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nats
from coordinator.app import Coordinator
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.topology import OBJECT_STORES, ensure_topology
from ktrdr.runtime.worker import Worker
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import ROOT, coordinator_settings, creds, fleet
from tests.coordinator.cluster import Cluster
from tests.support import standin_handlers, wait_status


async def test_an_op_survives_the_loss_of_one_node_of_three(cluster: Cluster) -> None:
    urls, tls_files = cluster.urls, cluster.tls
    await cluster.ready()
    # A lease longer than a leader election, so that losing a node does not look like losing the worker.
    lease = {"lease_ttl_s": 8.0, "heartbeat_s": 0.5}
    coordinator = Coordinator(settings=coordinator_settings(urls, js_replicas=3, nats_ca=tls_files.ca, **lease))
    await coordinator.start()
    try:
        worker = Worker(settings=WorkerSettings(nats_url=urls, nats_creds=creds(roles.WORKER), nats_ca=tls_files.ca,
                                                worker_id="w1", js_replicas=3, fetch_timeout_s=0.3, grace_s=1, **lease),
                        worker_type="test", capabilities=["dummy.any"], handlers=standin_handlers(["dummy.any"]))
        await worker.start()
        try:
            op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 3, "steps": 6}))
            await wait_status(coordinator, op.op_id, OpStatus.RUNNING, timeout=15)
            cluster.nodes[0].kill()
            done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=45)
            assert done.worker_id == "w1" and done.result == {"steps": 6, "duration": 3.0}
            after = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
            await wait_status(coordinator, after.op_id, OpStatus.COMPLETED, timeout=45)
        finally:
            await worker.stop()
    finally:
        await coordinator.stop()


async def test_streams_buckets_and_object_stores_made_with_one_replica_are_raised_to_the_setting(
        cluster: Cluster) -> None:
    urls, tls_files = cluster.urls, cluster.tls
    await cluster.ready()
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


async def test_the_cli_takes_the_three_url_setting(cluster: Cluster, tmp_path: Path) -> None:
    urls, tls_files = cluster.urls, cluster.tls
    await cluster.ready()
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
