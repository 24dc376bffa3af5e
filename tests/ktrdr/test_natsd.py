import socket
from pathlib import Path

import pytest

import nats
from ktrdr import natsd
from ktrdr.natsd import NatsServer, NatsServerError, embedded_gomaxprocs, free_port


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


def test_a_picked_port_taken_before_the_server_binds_it_is_picked_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken, taken])  # the client port, then the monitoring port: both stolen
        monkeypatch.setattr(natsd, "free_port", lambda host="127.0.0.1": next(picks, None) or free_port(host))
        with NatsServer(store_dir=tmp_path / "store", http_port=0) as server:
            assert server.running and taken not in (server.port, server.http_port)
            assert b"Server is ready" in server.log_file.read_bytes()


def test_a_port_asked_for_is_not_swapped_when_it_is_taken(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        server = NatsServer(store_dir=tmp_path / "store", port=taken)
        with pytest.raises(NatsServerError, match="exited"):
            server.start()
        assert server.port == taken and not server.running
