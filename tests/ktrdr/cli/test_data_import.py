"""``ktrdr data sample`` and ``data import``: the README's example works as written, and a bad file
is one error line naming the file and what to do, in the command's own flag names."""

from __future__ import annotations

from pathlib import Path

from tests.ktrdr.cli.running import cli, error_lines


async def test_the_sample_written_by_data_sample_imports(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sample = tmp_path / "EURUSD_1h.csv"
    done = await cli(None, "data", "sample", str(sample), KTRDR_HOME=str(home))
    assert done.returncode == 0, done.stderr
    done = await cli(None, "data", "import", str(sample), "--no-publish", KTRDR_HOME=str(home))
    assert done.returncode == 0, done.stderr
    assert "stored EURUSD 1h: 552 bars" in done.stdout
    again = await cli(None, "data", "sample", str(sample), KTRDR_HOME=str(home))
    assert again.returncode == 2 and error_lines(again) == [f"error: {sample} exists already: name another file"]


async def test_a_file_named_otherwise_is_told_to_pass_the_flags(tmp_path: Path) -> None:
    prices = tmp_path / "prices.csv"
    await cli(None, "data", "sample", str(prices))
    done = await cli(None, "data", "import", str(prices), "--no-publish", KTRDR_HOME=str(tmp_path / "home"))
    assert done.returncode == 2
    [line] = error_lines(done)
    assert line.startswith(f"error: {prices}: ") and line.endswith("pass --symbol and --timeframe")


async def test_bad_content_is_one_error_line_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "EURUSD_1h.csv"
    bad.write_text("timestamp,open,high,low,close,volume\n2024-01-01T00:00:00Z,1,2,0.5,abc,10\n")
    empty = tmp_path / "GBPUSD_1h.csv"
    empty.write_bytes(b"")
    for path, says in ((bad, "line 2, row 0, timestamp 2024-01-01T00:00:00Z: close 'abc' is not a number"),
                       (empty, "the file is empty")):
        done = await cli(None, "data", "import", str(path), "--no-publish", KTRDR_HOME=str(tmp_path / "home"))
        assert done.returncode == 2
        [line] = error_lines(done)
        assert line.startswith(f"error: {path}: ") and says in line, line


async def test_data_synth_replaces_a_dataset_of_other_bars_only_with_force(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    first = await cli(None, "data", "synth", "--symbol", "SYN", "--bars", "200", "--no-publish", KTRDR_HOME=home)
    assert first.returncode == 0 and "stored SYN 1h: 200 bars" in first.stdout, first.stderr
    same = await cli(None, "data", "synth", "--symbol", "SYN", "--bars", "200", "--no-publish", KTRDR_HOME=home)
    assert same.returncode == 0, same.stderr  # the same bars again: nothing to lose
    other = await cli(None, "data", "synth", "--symbol", "SYN", "--bars", "100", "--no-publish", KTRDR_HOME=home)
    assert other.returncode == 2
    [line] = error_lines(other)
    assert line.startswith("error: SYN 1h is stored already with other bars (200, ") and "--force" in line
    forced = await cli(None, "data", "synth", "--symbol", "SYN", "--bars", "100", "--force", "--no-publish",
                       KTRDR_HOME=home)
    assert forced.returncode == 0 and "stored SYN 1h: 100 bars" in forced.stdout, forced.stderr
