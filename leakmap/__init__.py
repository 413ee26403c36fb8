"""leakmap: shows what a phone sends out and where it goes.

The package is assembled from the repository's top-level folders:
``core/`` (decoding and classification, no mitmproxy), ``policies/``,
``geodb/``, ``store/``, ``addons/`` (thin mitmproxy adapters) and ``cli/``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("leakmap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+source"

# Run from a source checkout's root, ``leakmap`` would resolve to this folder
# alone; extend the search so that the installed subpackages are found too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
