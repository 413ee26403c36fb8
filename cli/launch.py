"""The ``leakmap`` command's entry point.

Loading the command line takes about a second (mitmproxy, SQLAlchemy); a
Ctrl-C in that second ends the program as one a moment later does (click
says "Aborted!" and exits with status 1), not with a traceback of the
import it cut short.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from leakmap.cli.main import main as run
    except KeyboardInterrupt:
        print("\nAborted!", file=sys.stderr)
        raise SystemExit(1) from None
    run()
