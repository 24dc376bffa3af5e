"""``ktrdr data import`` past a size limit: one error line naming the file and the limit, the CLI's
bad-input exit code, never a traceback, and nothing stored. Run in this process, so that the limits
can be made small (a subprocess would need a file of 256 MiB)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ktrdr.cli.app import app
from ktrdr.cli.render import EXIT_BAD_INPUT
from ktrdr.data.csv_io import sample_csv
from ktrdr.data.validation import BAR_BYTES
from subjects import limits


def run_import(path: Path) -> tuple[int, list[str], str]:
    done = CliRunner().invoke(app, ["data", "import", str(path), "--no-publish"])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, [line for line in done.stderr.splitlines() if line.strip()], done.stdout


@pytest.mark.parametrize(("limit", "value", "says"), [
    ("MAX_IMPORT_CSV_BYTES", 10_000, "larger than 10,000 bytes (MAX_IMPORT_CSV_BYTES"),
    ("MAX_DATASET_BYTES", 100 * BAR_BYTES, "more than 100 bars, the most a dataset holds"),
])
def test_a_csv_past_a_limit_is_one_error_line_and_exit_2(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str, value: int, says: str) -> None:
    path = tmp_path / "EURUSD_1h.csv"
    path.write_bytes(sample_csv())
    monkeypatch.setattr(limits, limit, value)
    code, errors, out = run_import(path)
    assert code == EXIT_BAD_INPUT and out == ""
    [line] = errors
    assert line.startswith(f"error: {path}: ") and says in line and "import it in parts" in line, line
    assert not (home / "data" / "EURUSD").exists()


def test_the_sample_still_imports_under_the_real_limits(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "EURUSD_1h.csv"
    path.write_bytes(sample_csv())
    code, errors, out = run_import(path)
    assert (code, errors) == (0, []) and "stored EURUSD 1h: 552 bars" in out
