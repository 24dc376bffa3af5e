"""The CPUs a worker may use (its cgroup quota, else its affinity) and the thread pools sized to them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ktrdr.runtime.cpus import (
    THREAD_VARS,
    CpuBudget,
    available_cpus,
    cgroup_cpu_limit,
    own_cgroups,
    parse_cfs_quota,
    parse_cpu_max,
    plan_threads,
    size_torch,
)


@pytest.mark.parametrize(("text", "cpus"), [
    ("max 100000", None), ("max", None), ("200000 100000", 2.0), ("150000 100000\n", 1.5), ("50000 100000", 0.5),
    ("100000", 1.0), ("", None), ("garbage here", None), ("0 100000", None), ("200000 0", None),
])
def test_cpu_max_is_parsed(text: str, cpus: float | None) -> None:
    assert parse_cpu_max(text) == cpus


@pytest.mark.parametrize(("quota", "period", "cpus"), [
    ("-1\n", "100000\n", None), ("300000", "100000", 3.0), ("25000", "100000", 0.25), ("x", "100000", None),
])
def test_cgroup_v1_quota_is_parsed(quota: str, period: str, cpus: float | None) -> None:
    assert parse_cfs_quota(quota, period) == cpus


def test_own_cgroups_reads_both_layouts() -> None:
    assert own_cgroups("0::/system.slice/ktrdr.service\n") == {"": "/system.slice/ktrdr.service"}
    v1 = own_cgroups("4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    assert v1["cpu"] == v1["cpuacct"] == "/docker/abc" and v1[""] == "/"


def _v2(root: Path, cgroup: str, limits: dict[str, str]) -> Path:
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for folder, text in limits.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "cpu.max").write_text(text)
    proc = root.parent / "proc-self-cgroup"
    proc.write_text(f"0::{cgroup}\n")
    return proc


def test_a_container_with_its_own_cgroup_namespace_reads_its_root(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _v2(root, "/", {".": "150000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5


def test_the_tightest_quota_on_the_way_up_counts(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _v2(root, "/workers.slice/one.service",
               {"workers.slice": "200000 100000\n", "workers.slice/one.service": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 2.0


def test_no_quota_anywhere_is_none(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    proc = _v2(root, "/user.slice", {"user.slice": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "no-proc") is None


def test_cgroup_v1_is_the_fallback(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    cpu = root / "cpu,cpuacct"
    cpu.mkdir(parents=True)
    (root / "cpu").symlink_to(cpu)
    (cpu / "cpu.cfs_quota_us").write_text("250000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc-self-cgroup"
    # Docker without a cgroup namespace: the host's path is not mounted inside, the container's own folder is.
    proc.write_text("3:cpu,cpuacct:/docker/0123abcd\n")
    assert cgroup_cpu_limit(root, proc) == 2.5


def test_the_quota_rounds_up_and_never_exceeds_the_affinity() -> None:
    assert available_cpus(quota=1.5, affinity=64).cpus == 2
    assert available_cpus(quota=0.2, affinity=64).cpus == 1
    assert available_cpus(quota=16.0, affinity=4).cpus == 4
    assert "quota" in available_cpus(quota=2.0, affinity=8).why


def test_this_machine_has_a_figure() -> None:
    budget = available_cpus()
    assert 1 <= budget.cpus <= (os.cpu_count() or 1)


def test_each_slot_gets_its_share_and_the_users_variables_stay() -> None:
    env: dict[str, str] = {"MKL_NUM_THREADS": "7"}
    plan = plan_threads(slots=2, budget=CpuBudget(8, "test"), environ=env)
    assert plan.threads == 4
    assert env == {"MKL_NUM_THREADS": "7", "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4"}
    assert not plan.torch_ours  # torch reads MKL's variable too: the user's choice stands
    assert plan_threads(slots=4, budget=CpuBudget(2, "test"), environ={}).threads == 1
    explicit: dict[str, str] = {}
    assert plan_threads(slots=1, threads=3, budget=CpuBudget(8, "test"), environ=explicit).threads == 3
    assert set(explicit) == set(THREAD_VARS)


def test_torch_gets_the_plan_when_it_is_ours() -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        plan = plan_threads(slots=1, threads=1, environ={})
        assert size_torch(plan)
        assert torch.get_num_threads() == 1
        assert not size_torch(plan_threads(slots=1, threads=2, environ={"OMP_NUM_THREADS": "5"}))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
