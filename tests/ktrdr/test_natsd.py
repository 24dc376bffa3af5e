from pathlib import Path

import pytest

import nats
from ktrdr.natsd import NatsServer, embedded_gomaxprocs


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


def test_embedded_server_uses_one_go_thread_per_four_cores() -> None:
    assert [embedded_gomaxprocs(cpus) for cpus in (1, 2, 4, 8, 16)] == [1, 1, 1, 2, 4]


def test_gomaxprocs_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOMAXPROCS", "3")
    assert NatsServer(store_dir=tmp_path).gomaxprocs == 3
    monkeypatch.delenv("GOMAXPROCS")
    assert NatsServer(store_dir=tmp_path).gomaxprocs == embedded_gomaxprocs()


def test_server_process_runs_with_the_chosen_go_threads(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path / "store", gomaxprocs=2) as server:
        assert server.pid is not None
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert b"GOMAXPROCS=2" in environ
