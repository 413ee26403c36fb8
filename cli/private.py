"""Files that hold a phone's identifiers or keys: readable by their owner only."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """``text`` to ``path``, mode 0600 whether or not the file existed (``O_CREAT`` alone keeps
    an existing file's mode)."""
    handle = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.fchmod(handle, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)


def private_empty(path: Path) -> None:
    """``path`` as an empty 0600 file, before something else writes it (a zip)."""
    handle = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    os.fchmod(handle, 0o600)
    os.close(handle)
