"""What a stored finding keeps of a value: a masked preview and a keyed hash; and captured
text made safe to print.

The preview keeps the first 4 and last 4 characters and masks the rest,
keeping the length (``8653•••••••1598``); values of 8 characters or fewer are
masked whole.  The keyed hash (HMAC-SHA256 with a key kept outside the
database) lets a reviewer correlate one value across flows without storing it.
"""

from __future__ import annotations

import hashlib
import hmac

MASK = "•"


def mask(value: str) -> str:
    if len(value) <= 8:
        return MASK * len(value)
    return value[:4] + MASK * (len(value) - 8) + value[-4:]


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def printable(text: str) -> str:
    """Captured text made safe for a terminal: control characters (escape sequences, line
    breaks that would forge a line of their own) become '?'."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "?" for ch in text)
