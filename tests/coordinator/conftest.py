from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrdr.security.tls import TlsFiles, ensure_server_cert, server_names
from tests.coordinator.cluster import Cluster, make_cluster


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return ensure_server_cert(tmp_path / "tls", server_names())


@pytest.fixture
def cluster(tmp_path: Path, tls_files: TlsFiles) -> Iterator[Cluster]:
    """The three-node secure cluster of tests/coordinator/cluster.py, started."""
    running = make_cluster(tmp_path, tls_files)
    try:
        running.start()
        yield running
    finally:
        running.stop()
