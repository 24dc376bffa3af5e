"""How many CPUs a worker may use, and its thread pools sized to them.

torch and numpy's BLAS start one thread per core they see, whatever share of the machine the
process has: in a container limited to 2 CPUs on a 64-core host, or as one of several workers on
a small one, they run many more threads than there are CPUs and spend the time switching between
them (the documented training took 63.7 s on a busy 2-core machine and 4.2 s on a quiet one, with
torch's threads never set). A worker therefore sizes them once, before numpy or torch is loaded:
the CPUs it may use are its cgroup's CPU quota in a container (``cpu.max``, or cgroup v1's
``cpu.cfs_quota_us``), else the CPUs it may run on (``os.sched_getaffinity``); each of its slots
gets an equal share. A thread variable the user set is left alone.

Nothing here imports numpy or torch: this module runs before they load.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# Read by OpenMP (torch's intra-op pool among them), OpenBLAS (numpy's wheels) and MKL when they load.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# cgroup v1 mounts the cpu controller under one of these names.
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
DEFAULT_PERIOD_US = 100_000


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2's ``cpu.max``, ``"<quota> <period>"`` in µs: the CPUs it allows, None for ``max`` (no limit).

    >>> parse_cpu_max("200000 100000"), parse_cpu_max("max 100000"), parse_cpu_max("50000 100000")
    (2.0, None, 0.5)
    """
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else DEFAULT_PERIOD_US
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs_quota(quota: str, period: str) -> float | None:
    """cgroup v1's ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``: the CPUs they allow, None for -1 (no limit)."""
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def own_cgroups(proc_cgroup: str) -> dict[str, str]:
    """``/proc/self/cgroup`` as controller -> path; cgroup v2's unified line is under ``""``."""
    out: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            out.setdefault(controller, path)
    return out


def _up_from(base: Path, path: str) -> Iterator[Path]:
    """``base/path`` and each folder above it up to ``base``, those that exist. In a container with
    its own cgroup namespace the path is ``/`` and ``base`` is the container's cgroup; without one, the
    host's path is not mounted there and only ``base`` exists, which is the container's own too."""
    rel = PurePosixPath(path or "/")
    for part in [rel, *rel.parents]:
        folder = base / str(part).lstrip("/")
        if folder.is_dir():
            yield folder


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota set on this process's cgroup or one above it, in CPUs; None without one."""
    try:
        own = own_cgroups(proc_cgroup.read_text())
    except OSError:
        own = {}
    limits: list[float] = []
    if (root / "cgroup.controllers").exists():  # v2 (unified)
        for folder in _up_from(root, own.get("", "/")):
            limit = _read(folder / "cpu.max", parse_cpu_max)
            if limit is not None:
                limits.append(limit)
    for mount in V1_CPU_MOUNTS:
        base = root / mount
        if not base.is_dir() or base.is_symlink():  # cpu,cpuacct is often linked to cpu: read once
            continue
        for folder in _up_from(base, own.get("cpu", "/")):
            try:
                limit = parse_cfs_quota((folder / "cpu.cfs_quota_us").read_text(),
                                        (folder / "cpu.cfs_period_us").read_text())
            except OSError:
                continue
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _read(path: Path, parse: Callable[[str], float | None]) -> float | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return parse(text)


def affinity_cpus() -> int:
    """The CPUs this process may run on (``taskset``, a cpuset), else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no sched_getaffinity
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CpuBudget:
    cpus: int
    why: str  # for the log: where the figure came from


def available_cpus(*, quota: float | None = None, affinity: int | None = None) -> CpuBudget:
    """The whole CPUs this process may keep busy: its cgroup quota rounded up, or its affinity, whichever
    is fewer. ``quota`` and ``affinity`` are read from the system unless given (tests give them)."""
    affinity = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_limit() if quota is None else quota
    if quota is not None and math.ceil(quota) < affinity:
        return CpuBudget(max(1, math.ceil(quota)), f"cgroup CPU quota {quota:g}")
    return CpuBudget(max(1, affinity), f"{affinity} CPU(s) to run on")


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # per slot: what each handler's torch and BLAS pools get
    why: str
    set_vars: tuple[str, ...]  # the variables this process set (the others were the user's)

    @property
    def torch_ours(self) -> bool:
        """Whether torch's pool is ours to size: the user set neither of the variables it reads."""
        return "OMP_NUM_THREADS" in self.set_vars and "MKL_NUM_THREADS" in self.set_vars


def plan_threads(*, slots: int, threads: int | None = None, budget: CpuBudget | None = None,
                 environ: MutableMapping[str, str] | None = None) -> ThreadPlan:
    """Threads per slot (``threads``: the user's ``KTRDR_THREADS``, else the CPUs divided by the slots),
    written into ``environ`` (``os.environ``) for each of :data:`THREAD_VARS` the user did not set.
    Call it before numpy and torch are imported: they read the variables when they load."""
    env = os.environ if environ is None else environ
    if threads is not None:
        why = "KTRDR_THREADS"
    else:
        budget = budget or available_cpus()
        threads = max(1, budget.cpus // max(1, slots))
        why = f"{budget.why}, {slots} slot(s)"
    set_vars = tuple(var for var in THREAD_VARS if var not in env)
    for var in set_vars:
        env[var] = str(threads)
    return ThreadPlan(threads=threads, why=why, set_vars=set_vars)


def size_torch(plan: ThreadPlan) -> bool:
    """Set torch's intra-op pool to the plan, if torch is loaded and its size is ours to choose."""
    torch = sys.modules.get("torch")
    if torch is None or not plan.torch_ours:
        return False
    torch.set_num_threads(plan.threads)
    return True
