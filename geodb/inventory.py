"""Facts about the MaxMind-DB files in use, for ``leakmap geodb info``.

``describe`` turns the (kind, path) pairs of ``GeoResolver.databases()``
into ``DatabaseInfo`` records: type, description, build date and age, number
of networks, size, whether the file is one of the embedded databases, and
whether it is older than a limit.  ``stale_warnings`` words the too-old ones
for the user.

This module is pure: no mitmproxy, no click.  Counting networks reads only
the search tree of a file and decodes no records.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb
from maxminddb.reader import Metadata

from leakmap.core.digest import file_sha256

DEFAULT_MAX_AGE_DAYS = 180
SOURCES_FILE = "SOURCES.json"
DATA_SECTION_SEPARATOR = 16  # zero bytes between the search tree and the data

# For 28-bit records the fourth byte of a node holds the top 4 bits of both
# records: the high nibble belongs to the left record, the low one to the right.
_HIGH_NIBBLE = bytes(value >> 4 for value in range(256))
_LOW_NIBBLE = bytes(value & 0x0F for value in range(256))


# --------------------------------------------------------------------------
# counting networks
# --------------------------------------------------------------------------


def _metadata(path: Path) -> Metadata:
    """The maxminddb metadata of path; ValueError when it is no MaxMind DB."""
    try:
        with maxminddb.open_database(str(path)) as reader:
            return reader.metadata()
    except (maxminddb.InvalidDatabaseError, ValueError) as err:
        raise ValueError(f"{path}: not a readable MaxMind DB (.mmdb) file: {err}") from None


def _read_tree(path: Path, node_count: int, record_size: int) -> bytes:
    """The search tree section of path (node_count nodes of two records)."""
    if record_size not in (24, 28, 32):
        raise ValueError(f"{path}: unsupported record size {record_size} (expected 24, 28 or 32)")
    tree_size = node_count * record_size // 4
    with path.open("rb") as handle:
        tree = handle.read(tree_size)
    if len(tree) < tree_size or path.stat().st_size < tree_size + DATA_SECTION_SEPARATOR:
        raise ValueError(f"{path}: file is shorter than its search tree ({node_count} nodes)")
    return tree


def _words(parts: list[bytes], count: int) -> array[int]:
    """Unsigned 32-bit integers from four byte strings: most to least significant."""
    packed = bytearray(4 * count)
    for index, part in enumerate(parts):
        packed[index::4] = part
    return _big_endian(packed)


def _big_endian(packed: bytes | bytearray) -> array[int]:
    """A big-endian byte string as an array of unsigned 32-bit integers."""
    words = array("I")  # 4 bytes on every platform CPython supports
    words.frombytes(packed)
    if sys.byteorder == "little":
        words.byteswap()
    return words


def _records(tree: bytes, node_count: int, record_size: int) -> array[int]:
    """Every record of the search tree (left and right of each node) as integers."""
    if record_size == 32:
        return _big_endian(tree)
    if record_size == 24:
        # 3-byte records one after another: prepend a zero byte to each.
        count = 2 * node_count
        return _words([bytes(count), tree[0::3], tree[1::3], tree[2::3]], count)
    # 28 bits: 7-byte nodes; bytes 0-2 and 4-6 are the low 24 bits of the
    # left and right record, byte 3 holds both records' top nibbles.
    middle = tree[3::7]
    left = _words([middle.translate(_HIGH_NIBBLE), tree[0::7], tree[1::7], tree[2::7]], node_count)
    right = _words([middle.translate(_LOW_NIBBLE), tree[4::7], tree[5::7], tree[6::7]], node_count)
    return left + right


def count_networks(path: str | Path) -> int:
    """How many networks (data leaves of the search tree) a MaxMind DB holds.

    Reads node_count and record_size (24, 28 or 32 bits) from the metadata,
    then scans the search tree section (node_count * record_size * 2 / 8
    bytes) and counts the records whose value is greater than node_count:
    those point into the data section.  A record equal to node_count is
    empty (no data), a smaller one points to another node.  No data record
    is decoded: about 0.3 s for a 1.3 million node file.

    IPv6 databases that hold IPv4 data usually alias ``::ffff:0:0/96`` and
    ``2002::/16`` to the IPv4 subtree under ``::/96``: those alias records
    point to the same nodes (they are node pointers, not data), so a linear
    pass over the node records counts every IPv4 network once, not three
    times.  That is the number maxminddb's iteration (``for network, record
    in reader``) yields, as it skips the aliased subtrees too.

    Raises ValueError naming the path when it is not a MaxMind DB, and
    OSError when it cannot be read.
    """
    path = Path(path)
    meta = _metadata(path)
    node_count, record_size = int(meta.node_count), int(meta.record_size)
    tree = _read_tree(path, node_count, record_size)
    records = _records(tree, node_count, record_size)
    return sum(map(node_count.__lt__, records))


# --------------------------------------------------------------------------
# describing databases
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseInfo:
    """What ``leakmap geodb info`` shows about one database file."""

    kind: str  # "city" | "country" | "asn"
    path: str
    database_type: str
    description: str
    build_date: str  # ISO date (UTC) of the metadata build_epoch
    age_days: int
    networks: int
    ip_version: int
    node_count: int
    size_bytes: int
    embedded: bool
    stale: bool

    def as_dict(self) -> dict[str, object]:
        """Plain dict of all fields (JSON-ready)."""
        return dataclasses.asdict(self)


def _english(description: Any) -> str:
    """The English description from the metadata (or any, or '')."""
    if isinstance(description, dict):
        text = description.get("en") or next(iter(description.values()), "")
        return str(text)
    return str(description or "")


def _utc(now: datetime) -> datetime:
    """now as an aware datetime; a naive one is taken as UTC."""
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now


def _recorded_files(embedded_dir: Path) -> dict[str, dict[str, Any]]:
    """The 'files' entries of embedded_dir/SOURCES.json ({} when unreadable)."""
    try:
        sources = json.loads((embedded_dir / SOURCES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = sources.get("files") if isinstance(sources, dict) else None
    return files if isinstance(files, dict) else {}


def _is_embedded(path: Path, embedded_dir: Path) -> bool:
    return path.resolve().parent == embedded_dir.resolve()


def _recorded_networks(path: Path, recorded: dict[str, dict[str, Any]]) -> int | None:
    """networks from SOURCES.json when path is byte-identical to the recorded file."""
    entry = recorded.get(path.name)
    if not isinstance(entry, dict) or not isinstance(entry.get("networks"), int):
        return None
    return int(entry["networks"]) if entry.get("sha256") == file_sha256(path) else None


def _info(
    kind: str, path: Path, max_age_days: int, now: datetime, recorded: dict[str, dict[str, Any]] | None
) -> DatabaseInfo:
    """One DatabaseInfo; recorded is the SOURCES.json files map for embedded files."""
    meta = _metadata(path)
    built = datetime.fromtimestamp(meta.build_epoch, UTC)
    age_days = (_utc(now) - built).days
    networks = _recorded_networks(path, recorded) if recorded is not None else None
    return DatabaseInfo(
        kind=kind,
        path=str(path),
        database_type=str(meta.database_type),
        description=_english(meta.description),
        build_date=built.date().isoformat(),
        age_days=age_days,
        networks=count_networks(path) if networks is None else networks,
        ip_version=int(meta.ip_version),
        node_count=int(meta.node_count),
        size_bytes=path.stat().st_size,
        embedded=recorded is not None,
        stale=age_days > max_age_days,
    )


def describe(
    databases: list[tuple[str, Path]], max_age_days: int, now: datetime, embedded_dir: Path
) -> list[DatabaseInfo]:
    """Describe each (kind, path) pair, as given by ``GeoResolver.databases()``.

    Files in embedded_dir whose sha256 matches the one recorded in its
    SOURCES.json take their network count from there; every other file is
    counted with ``count_networks``.  Ages are whole days from the build
    time to now (a naive now is taken as UTC).  Raises ValueError for a file
    that is not a MaxMind DB.
    """
    recorded = _recorded_files(embedded_dir)
    result = []
    for kind, path in databases:
        path = Path(path)
        sources = recorded if _is_embedded(path, embedded_dir) else None
        result.append(_info(kind, path, max_age_days, now, sources))
    return result


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def stale_warnings(infos: Iterable[DatabaseInfo], max_age_days: int) -> list[str]:
    """One line per database built more than max_age_days ago."""
    lines = []
    for info in infos:
        if info.age_days <= max_age_days:
            continue
        advice = "rebuild it with 'python -m leakmap.geodb.build'" if info.embedded else "update it"
        lines.append(
            f"geoip: {info.path} was built {info.build_date} ({_days(info.age_days)} ago, "
            f"older than {_days(max_age_days)}); {advice} or pass --geoip-dir with newer files"
        )
    return lines
