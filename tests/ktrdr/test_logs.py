"""Every ktrdr process's log lines are bounded: a rejected 1 MiB message is logged as a line of a
couple of thousand characters saying how much was left out, not as a 1 MB line."""

from __future__ import annotations

import logging
import subprocess
import sys

from ktrdr.logs import MAX_LOG_LINE_CHARS, BoundedFormatter
from tests.conftest import ROOT

MARKER_ROOM = 40  # "… (N more chars)"


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord("ktrdr.test", logging.WARNING, __file__, 1, message, args,
                             sys.exc_info() if exc_info else None)


def test_a_long_message_is_cut_saying_how_much_was_left_out() -> None:
    line = BoundedFormatter().format(record("rejected %r", b"x" * 1_048_576))
    assert MAX_LOG_LINE_CHARS < len(line) <= MAX_LOG_LINE_CHARS + MARKER_ROOM
    assert line.endswith(" more chars)") and "ktrdr.test: rejected b'xxx" in line
    short = BoundedFormatter().format(record("fine"))
    assert short.endswith("ktrdr.test: fine")


def test_a_traceback_keeps_its_frames_and_its_exception_line_is_cut() -> None:
    try:
        raise ValueError("bad payload: " + "y" * 500_000)
    except ValueError:
        text = BoundedFormatter().format(record("decoding failed", exc_info=True))
    lines = text.split("\n")
    assert lines[1] == "Traceback (most recent call last):"
    assert any("test_a_traceback_keeps_its_frames" in line for line in lines)
    assert lines[-1].startswith("ValueError: bad payload: yyy") and lines[-1].endswith(" more chars)")
    assert max(len(line) for line in lines) <= MAX_LOG_LINE_CHARS + MARKER_ROOM


def test_setup_logging_bounds_the_lines_of_a_ktrdr_process() -> None:
    script = ("import logging; from ktrdr.logs import setup_logging; setup_logging(); "
              "logging.getLogger('coordinator').warning('refused %s', 'z' * 1_048_576)")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    [line] = done.stderr.splitlines()
    assert "WARNING coordinator: refused zzz" in line and line.endswith(" more chars)")
    assert len(line) <= MAX_LOG_LINE_CHARS + MARKER_ROOM
