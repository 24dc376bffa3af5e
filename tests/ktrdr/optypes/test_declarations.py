"""Every operation type is one declaration: found by name, routed on real capabilities, parents
planned by the coordinator; the op-type names appear nowhere else in the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from ktrdr.optypes import ON_COORDINATOR, OpType, Rejected, UnknownOpType, declare, on, op_type, op_types, types_on
from ktrdr.optypes.walkforward import WalkForwardParams, parse_length
from subjects import names

ROOT = Path(__file__).resolve().parents[3]
PLATFORM_TYPES = {"backtesting", "training", "data_load", "dummy", "sweep", "walkforward"}


def test_the_platforms_types_are_declared_once_each() -> None:
    declared = {t.name for t in op_types()}
    assert PLATFORM_TYPES <= declared
    for name in PLATFORM_TYPES:
        assert op_type(name).name == name


def test_every_worker_route_is_on_known_capabilities_and_every_capability_has_a_type() -> None:
    for t in op_types():
        assert t.on_coordinator == (t.parent is not None)
        assert set(t.runs.capabilities) <= set(names.CAPABILITIES)
    for capability in names.CAPABILITIES:
        assert types_on(capability), capability


def test_training_prefers_gpus_and_falls_back_to_cpus() -> None:
    assert op_type("training").runs.capabilities == (names.CAP_TRAINING_GPU, names.CAP_TRAINING_CPU)


def test_an_unknown_type_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownOpType, match="unknown operation type 'teleport'; known: .*backtesting"):
        op_type("teleport")


def test_a_name_cannot_be_declared_twice() -> None:
    class P(BaseModel):
        pass

    with pytest.raises(ValueError, match="declared twice"):
        declare(OpType(name="dummy", params=P, runs=on(names.CAP_DUMMY_ANY), summary="again"))


def test_a_coordinator_type_needs_a_plan_and_a_worker_type_a_capability() -> None:
    class P(BaseModel):
        pass

    with pytest.raises(ValueError, match="parent plan"):
        OpType(name="orphan", params=P, runs=ON_COORDINATOR, summary="no plan")
    with pytest.raises(ValueError, match="at least one capability"):
        on()


def test_no_op_type_name_is_spelled_outside_its_declaration() -> None:
    # Quoted names in source code, outside ktrdr/optypes and the tests (a wire client may say "dummy");
    # a subscript (doc["sweep"]) is a document's key, not a type.
    spelled = re.compile(r"""(?<!\[)["'](backtesting|data_load|walkforward|sweep)["']""")
    found = []
    for package in ("ktrdr", "coordinator", "subjects", "worker_backtest", "worker_training", "host_gpu", "host_ib"):
        for path in (ROOT / package).rglob("*.py"):
            if "optypes" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if spelled.search(line) and "command(" not in line:
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_walkforward_lengths_are_bars_or_fixed_durations() -> None:
    assert parse_length(500) == 500
    assert parse_length("26w").days == 182 and parse_length("12h").total_seconds() == 43_200
    with pytest.raises(ValueError, match="a number and a unit"):
        parse_length("6mo")


def test_walkforward_admission_decides_the_approach_from_the_strategy() -> None:
    from ktrdr.optypes.walkforward import admit_walkforward

    base = {"strategy": "sma_crossover", "symbol": "SYNTH", "timeframe": "1h", "folds": 3}
    grid = admit_walkforward(WalkForwardParams(**base, grid={"fast": [5, 10]}))
    assert grid.approach == "grid"
    with pytest.raises(Rejected, match="rule-based"):
        admit_walkforward(WalkForwardParams(**base))


def test_every_declared_types_capabilities_are_pulled_by_a_role_derived_from_the_capabilitys_name() -> None:
    from subjects import roles

    pulled = set(roles.capabilities_of(roles.WORKER)) | set(roles.capabilities_of(roles.IB))
    for t in op_types():
        assert set(t.runs.capabilities) <= pulled, t.name
    assert set(names.CAPABILITIES) <= pulled  # a capability no role may pull would queue jobs for ever
    assert roles.capabilities_of(roles.IB) == (names.CAP_DATA_IB, names.CAP_DUMMY_ANY)
    assert names.CAP_TRAINING_GPU in roles.capabilities_of(roles.WORKER)
    assert roles.capabilities_of(roles.CLIENT) == ()


def test_a_worker_key_without_gpu_may_not_pull_gpu_jobs() -> None:
    from subjects import roles

    def pulls(gpu: bool) -> set[str]:
        allowed = roles.permissions(roles.WORKER, "U" + "A" * 55, gpu=gpu).publish
        return {c for c in names.CAPABILITIES if names.jobs_pull_subject(c) in allowed}

    assert pulls(gpu=True) - pulls(gpu=False) == {names.CAP_TRAINING_GPU}
