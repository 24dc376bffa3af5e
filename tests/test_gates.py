"""Lint and type checks as tests: ``pytest`` (what CI runs) fails on a ruff finding or a mypy error.

``ruff check .`` with ``[tool.ruff]`` and ``mypy`` with ``[tool.mypy]`` (pyproject.toml), each in the
venv pytest runs in. mypy keeps its incremental cache in the checkout's ``.mypy_cache`` (gitignored):
a warm run takes about a second, a cold one some twenty.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

GATE_TIMEOUT_S = 200


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=GATE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` did not finish within {GATE_TIMEOUT_S} s ({exc})")


def test_ruff_check_is_clean() -> None:
    done = _run("ruff", "check", ".")
    assert done.returncode == 0, f"`ruff check .` found problems:\n{done.stdout}{done.stderr}"


def test_mypy_is_clean() -> None:
    done = _run("mypy", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert done.returncode == 0, f"`mypy` found problems:\n{done.stdout}{done.stderr}"
