"""``dummy``: simulated work in steps, served by every worker type (diagnostics and tests)."""

from __future__ import annotations

from ktrdr.optypes.defn import OpType, declare, on
from subjects import names
from subjects.params import DummyParams
from subjects.results import DummyResult

DUMMY = declare(OpType(
    name="dummy", params=DummyParams, result=DummyResult, runs=on(names.CAP_DUMMY_ANY),
    summary="simulated work in steps: progress, cancel and failure on any worker",
    cli="ktrdr dummy"))
