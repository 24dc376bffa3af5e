from pathlib import Path

import nats
from ktrdr.natsd import NatsServer


async def test_embedded_server_runs_jetstream_and_comes_back_on_the_same_port(tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "store")
    server.start()
    try:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().account_info()
        assert info.limits is not None
        await nc.close()
        port = server.port
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port and server.running
    finally:
        server.stop()
        server.stop()  # idempotent
