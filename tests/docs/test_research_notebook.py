"""The notebook in ``docs/`` runs, cell by cell, in a real Jupyter kernel against a real platform: what
a researcher opens first works as it reads."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nats.aio.client import Client as Nats
from nbclient import NotebookClient

from coordinator.app import Coordinator
from ktrdr.client.context import Context, write_context
from ktrdr.natsd import NatsServer
from subjects import roles
from subjects.models import OpStatus
from tests.backtesting import backtest_worker, publish_synth
from tests.conftest import ROOT, MakeWorker, creds

NOTEBOOK = ROOT / "docs" / "research.ipynb"


def outputs(cell: Any, kind: str) -> str:
    """Everything ``cell`` showed as ``kind`` (``text/html``, ``text/plain``), and what it printed."""
    found = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            found.append(out.get("text", ""))
        found.append(str((out.get("data") or {}).get(kind, "")))
    return "\n".join(found)


async def test_the_research_notebook_runs_against_a_platform(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Nats, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("KTRDR_NATS_URL", "KTRDR_NATS_CREDS", "KTRDR_NATS_CA", "KTRDR_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    # What the notebook asks for first: a platform (its context) and SYN bars in the data bucket.
    write_context(tmp_path / "home", Context(name="default", nats_url=nats_server.url,
                                             nats_creds=str(creds(roles.CLIENT))))
    await publish_synth(nc, tmp_path / "origin", symbol="SYN", bars=3000)
    await backtest_worker(make_worker, "bt1", tmp_path / "worker", slots=2)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel inherits this process's environment (KTRDR_HOME is the test's) and runs in tmp_path.
    runner = NotebookClient(notebook, kernel_name="python3", timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    await asyncio.to_thread(runner.execute)  # a cell that raises fails here, naming it

    code = [c for c in notebook.cells if c.cell_type == "code"]
    by_source = {c.source.splitlines()[0]: c for c in code}
    backtest = by_source['run = c.backtest("sma_crossover", symbol="SYN", timeframe="1h", parameters={"fast": 10, '
                         '"slow": 30})']
    # The progress bar drew in the cell's output and was updated in place to its end.
    progress = outputs(backtest, "text/html")
    assert progress.count('class="ktrdr-progress"') == 1 and 'value="100.0"' in progress and "done" in progress
    assert "sharpe_ratio" in outputs(backtest, "text/plain")

    ops = {op.type: op for op in coordinator.ops.all() if op.parent_id is None}
    assert {t: op.status for t, op in ops.items()} == {
        "backtesting": OpStatus.COMPLETED, "sweep": OpStatus.COMPLETED, "walkforward": OpStatus.COMPLETED}
    # The ranking shown is the sweep's: its best variant heads it.
    best = (ops["sweep"].result or {})["best"]
    ranking = outputs(by_source['sweep = c.sweep("sma_crossover", symbol="SYN", timeframe="1h",'], "text/plain")
    first = re.search(r"^1 +(\d+) +(\d+) ", ranking, re.MULTILINE)
    assert first is not None and first.groups() == (str(best["parameters"]["fast"]), str(best["parameters"]["slow"]))
    history = outputs(by_source['c.ops(limit=10)[["type", "status", "duration_s", "strategy", "symbol", '
                                '"total_return_pct"]]'], "text/plain")
    assert all(op.op_id in history for op in ops.values())
    summary = outputs(by_source["import pandas as pd"], "text/plain")
    walkforward = ops["walkforward"].result or {}
    assert re.search(rf"^trades +{walkforward['trade_stats']['trades']}$", summary, re.MULTILINE), summary
    assert f"Name: {ops['walkforward'].op_id}" in summary
