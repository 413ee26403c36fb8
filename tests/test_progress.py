"""Long commands show progress on a terminal and stay quiet when piped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import BIN, SAMPLES, leakmap_cli


def _on_a_terminal(*args: str) -> str:
    """What ``leakmap ARGS`` writes to its standard error when that is a terminal."""
    primary, secondary = os.openpty()
    try:
        done = subprocess.run([str(BIN / "leakmap"), *args], stdout=subprocess.DEVNULL,
                              stderr=secondary, timeout=120, check=False)
        os.close(secondary)
        shown = b""
        while chunk := _read(primary):
            shown += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0, shown
    return shown.decode(errors="replace")


def test_analyze_draws_progress_on_a_terminal_only(tmp_path: Path) -> None:
    har = str(SAMPLES / "redmi-2014.har")
    db = f"sqlite:///{tmp_path / 'tty.db'}"
    text = _on_a_terminal("analyze", har, har, "--device", str(SAMPLES / "redmi-1s.yaml"), "--db", db)
    assert "2/2 captures" in text and "12 flows" in text and "\r" in text
    assert "run analyze-" in text  # the summary line after it
    piped = leakmap_cli("analyze", har, "--device", str(SAMPLES / "redmi-1s.yaml"),
                        "--db", f"sqlite:///{tmp_path / 'pipe.db'}")
    assert "\r" not in piped.stderr and "captures" not in piped.stderr
    report = _on_a_terminal("report", "--db", db, "--format", "html", "-o", str(tmp_path / "r.html"))
    assert "reading findings" in report and "writing the html report (10 findings, 6 flows)" in report
    quiet = leakmap_cli("report", "--db", db, "--format", "html", "-o", str(tmp_path / "q.html"))
    assert quiet.stderr == ""


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the other end closed: all is read
        return b""
