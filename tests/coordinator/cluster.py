"""The three-node secure JetStream cluster the cluster tests run on: the shipped
nats/cluster/secure/node.conf three times on loopback, with the fleet.conf that `ktrdr fleet
server-config` writes beside it (roles and TLS)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

import nats
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.security.serverconf import render
from ktrdr.security.tls import TlsFiles
from subjects import roles
from tests.conftest import ROOT, fleet
from tests.support import assert_eventually

SHIPPED_HTTP = "http: 127.0.0.1:8222"


@dataclass(frozen=True, kw_only=True)
class Cluster:
    nodes: list[NatsServer]
    # Each node's monitoring port (the shipped file's `http:`, rewritten per node here).
    monitoring: dict[str, int]
    tls: TlsFiles

    @property
    def urls(self) -> str:
        """What every ktrdr process takes as KTRDR_NATS_URL."""
        return ",".join(url(node) for node in self.nodes)

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    def serving(self, nc: Client) -> NatsServer:
        """The node ``nc`` is connected to now."""
        assert nc.connected_url is not None, "not connected"
        return next(n for n in self.nodes if n.port == nc.connected_url.port)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def jsz(self) -> dict[str, Any]:
        """JetStream's state (`/jsz`) as the first running node sees it."""
        node = next(n for n in self.nodes if n.running)
        async with httpx.AsyncClient(timeout=2.0) as http:
            return json.loads((await http.get(f"http://127.0.0.1:{self.monitoring[node.name]}/jsz")).text)

    async def meta_leader(self) -> NatsServer:
        """The node leading JetStream's meta group (which creates and places every stream)."""
        async def leader() -> str | None:
            try:
                return (await self.jsz()).get("meta_cluster", {}).get("leader") or None
            except httpx.HTTPError:
                return None

        return self.node(await assert_eventually(leader, timeout=30, interval=0.2,
                                                 message="the cluster elected no meta leader"))

    async def ready(self) -> None:
        await assert_eventually(lambda: jetstream_ready(url(self.nodes[0]), self.tls.ca), timeout=30, interval=0.2,
                                message="the cluster elected no JetStream leader")


def url(node: NatsServer) -> str:
    return f"tls://127.0.0.1:{node.port}"


def make_cluster(root: Path, tls: TlsFiles) -> Cluster:
    """Three nodes, not yet started, each with its own store under ``root`` (kept across restarts)."""
    routes = [free_port() for _ in range(3)]
    template = (ROOT / "nats" / "cluster" / "secure" / "node.conf").read_text()
    assert SHIPPED_HTTP in template, "node.conf no longer names the monitoring port this rewrites"
    (root / "fleet.conf").write_text(render(credentials=fleet().credentials, tls=tls))
    nodes, monitoring = [], {}
    for i, route in enumerate(routes):
        name = f"n{i}"
        env = {"KTRDR_NODE_NAME": name, "KTRDR_NODE_LISTEN": "127.0.0.1:0",
               "KTRDR_NODE_CLUSTER": f"127.0.0.1:{route}", "KTRDR_NODE_STORE": str(root / f"store{i}"),
               **{f"KTRDR_ROUTE_{j + 1}": f"nats-route://127.0.0.1:{r}" for j, r in enumerate(routes)}}
        # NatsServer's own flags pick the client port; the rest is the shipped file.
        # Three hosts would each have their own 8222; here the nodes share one.
        monitoring[name] = free_port()
        conf = root / f"node{i}.conf"
        conf.write_text(template.replace(SHIPPED_HTTP, f"http: 127.0.0.1:{monitoring[name]}"))
        nodes.append(NatsServer(store_dir=root / f"store{i}", config_file=conf, name=name, env=env,
                                store_in_config=True))
    return Cluster(nodes=nodes, monitoring=monitoring, tls=tls)


async def jetstream_ready(server_url: str, ca: Path) -> bool:
    try:
        nc = await nats.connect(server_url, connect_timeout=1, max_reconnect_attempts=0,
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
