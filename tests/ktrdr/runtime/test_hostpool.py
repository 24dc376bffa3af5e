"""A host key from a pool: one per running process, given back however the process ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ktrdr.runtime.hostpool import claim_credential
from ktrdr.security.credentials import CredentialError, NatsCredential
from ktrdr.security.fleet import host_pool
from ktrdr.security.hosts import load_hosts


def test_each_holder_gets_a_key_no_other_holds_and_a_full_pool_says_so(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    made = host_pool(tmp_path / "home", role="worker", folder=pool, count=2)
    assert made == ["worker-pool-01", "worker-pool-02"]
    first, first_hold = claim_credential(pool)
    second, second_hold = claim_credential(pool)
    assert {NatsCredential.load(first).host, NatsCredential.load(second).host} == set(made)
    with pytest.raises(CredentialError, match="all 2 host credentials in .* are held by running workers"):
        claim_credential(pool)
    first_hold.close()
    again, _ = claim_credential(pool)
    assert again == first
    second_hold.close()


def test_a_key_held_by_a_process_that_was_killed_is_free_again(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    host_pool(tmp_path / "home", role="worker", folder=pool, count=1)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from ktrdr.runtime.hostpool import claim_credential; "
        f"held = claim_credential(Path({str(pool)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(CredentialError, match="held by running workers"):
            claim_credential(pool)
    finally:
        holder.kill()
        holder.wait()
    key, hold = claim_credential(pool)
    assert key.name == "worker-pool-01.nk"
    hold.close()


def test_provisioning_again_keeps_the_keys_and_a_smaller_pool_takes_the_rest_out_of_the_fleet(
        tmp_path: Path) -> None:
    home, pool = tmp_path / "home", tmp_path / "pool"
    host_pool(home, role="worker", folder=pool, count=3)
    (pool / "worker.nk").write_text("left by --role-dir\n")
    keys = {p.name: p.read_text() for p in pool.glob("worker-pool-*.nk")}
    host_pool(home, role="worker", folder=pool, count=3)
    assert {p.name: p.read_text() for p in pool.glob("*.nk")} == keys  # and the shared role key is gone
    host_pool(home, role="worker", folder=pool, count=1)
    assert sorted(p.name for p in pool.glob("*.nk")) == ["worker-pool-01.nk"]
    assert sorted(load_hosts(home / "auth")) == ["worker-pool-01"]
    assert (pool / "worker-pool-01.nk").read_text() == keys["worker-pool-01.nk"]


def test_an_empty_or_missing_pool_is_named(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="cannot read the host credential pool"):
        claim_credential(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CredentialError, match="holds no keys"):
        claim_credential(tmp_path / "empty")
