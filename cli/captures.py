"""Saved captures as ``leakmap analyze`` reads them: HAR 1.2 files and mitmproxy flow files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from leakmap.core.digest import file_sha256
from leakmap.core.exchange import Exchange

_BOM = b"\xef\xbb\xbf"


def is_har(path: Path) -> bool:
    """JSON (HAR) rather than a mitmproxy flow file, whose first byte is a digit."""
    with path.open("rb") as handle:
        head = handle.read(64).removeprefix(_BOM).lstrip()
        while not head and (more := handle.read(_HEAD)):  # whitespace before the document
            head = more.lstrip()
        return head[:1] in (b"{", b"[")


_HEAD = 64 * 1024


def read_capture(path: Path, keep: int | None = None) -> Iterator[Exchange]:
    """Exchanges of a HAR file or a mitmproxy flow file; ValueError where it is damaged.
    ``keep`` (the body cap): a longer body or message keeps only its first ``keep`` bytes,
    the ones the analysis scans, and its flow says so."""
    from leakmap.core.har import read_har

    if is_har(path):
        yield from read_har(path, keep)
        return
    from leakmap.addons.flows import read_flow_file

    yield from read_flow_file(path, keep)


def capture_items(path: Path, keep: int | None = None) -> Iterator[Exchange | bytes]:
    """What a worker process needs for each flow of a capture: a HAR file's exchanges, a
    flow file's stored flows unparsed (the worker parses them: most of the reading time).
    ``keep``: as for :func:`read_capture`."""
    if is_har(path):
        from leakmap.core.har import read_har

        yield from read_har(path, keep)
        return
    from leakmap.addons.flows import flow_records

    yield from flow_records(path, keep)


def run_captures(run: dict[str, Any]) -> list[tuple[Path, str | None]]:
    """Each capture a run recorded (``runs.captures``), and why it can no longer be read as
    the run read it (None: it can).  A capture without a hash (its run did not end cleanly)
    can: it is read as far as it is whole."""
    checked = []
    for capture in run.get("captures") or []:
        path = Path(capture.get("path") or "")
        problem = None
        if not path.is_file():
            problem = f"the capture {path} of run {run['run']!r} is gone"
        elif capture.get("sha256") and file_sha256(path) != capture["sha256"]:
            problem = (f"the capture {path} changed since run {run['run']!r} recorded it "
                       "(its SHA-256 differs)")
        checked.append((path, problem))
    return checked
