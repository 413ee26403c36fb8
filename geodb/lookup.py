"""IP address -> country / city / ASN lookups for leakmap.

``GeoResolver`` reads MaxMind-DB files with ``geoip2``: by default the
embedded databases in ``leakmap/geodb/data`` (country + ASN, see
docs/geodb.md), or the MaxMind GeoLite2/GeoIP2 or DB-IP lite files found in
a folder given as ``geoip_dir``.  A list of ``NetworkOverride`` entries (read
from YAML with ``load_networks``) can name operators and fix or fill fields,
also for private lab networks.

This module is pure: no mitmproxy, no database layer.  ``lookup`` never
raises; configuration problems raise ``GeoConfigError`` with a message meant
for the user.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import geoip2.database
import geoip2.errors
import maxminddb

from leakmap.core.yamlsource import ConfigError, NodePath, Sourced, load

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DATA_DIR = Path(__file__).resolve().parent / "data"
EMBEDDED_FILES = {"country": "leakmap-country.mmdb", "asn": "leakmap-asn.mmdb"}
CACHE_SIZE = 65536

# File-name preference within each kind; any other *.mmdb of the right
# database_type comes after these.
NAME_PREFERENCE = {
    "city": ("geoip2-city.mmdb", "geolite2-city.mmdb", "dbip-city-lite*.mmdb"),
    "country": ("geoip2-country.mmdb", "geolite2-country.mmdb", "dbip-country-lite*.mmdb"),
    "asn": ("geolite2-asn.mmdb", "dbip-asn-lite*.mmdb"),
}
EXPECTED_FILES = (
    "GeoLite2-City.mmdb / GeoIP2-City.mmdb / dbip-city-lite*.mmdb, "
    "GeoLite2-Country.mmdb / GeoIP2-Country.mmdb / *Country*.mmdb, "
    "GeoLite2-ASN.mmdb / *ASN*.mmdb"
)

OVERRIDE_FIELDS = ("country", "asn", "as_org", "operator", "operator_country")
NETWORK_KEYS = ("cidr", *OVERRIDE_FIELDS)


class GeoConfigError(ConfigError):
    """Bad geolocation configuration (databases folder, networks file)."""


@dataclass(frozen=True)
class GeoInfo:
    """What is known about one address."""

    ip: str | None
    scope: str  # "public" | "private" | "loopback" | "reserved" | "unknown"
    country: str | None
    city: str | None
    asn: int | None
    as_org: str | None
    operator: str | None = None
    operator_country: str | None = None
    operator_source: str | None = None  # "network" (--networks) or "policy" (policy networks:)

    def as_dict(self) -> dict[str, object]:
        """Plain dict of all fields (JSON-ready)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class NetworkOverride:
    """Facts about a network that win over the databases."""

    cidr: IPNetwork
    country: str | None = None
    asn: int | None = None
    as_org: str | None = None
    operator: str | None = None
    operator_country: str | None = None
    source: str = "network"  # "network" for --networks, "policy" for a policy's networks:


# --------------------------------------------------------------------------
# networks YAML
# --------------------------------------------------------------------------


def _fail(source: Sourced, where: NodePath, what: str, at_key: bool = False) -> GeoConfigError:
    return GeoConfigError(f"{source.where(where, at_key)}: {what}")


def _text(source: Sourced, where: NodePath, value: Any) -> str:
    """A scalar as written: ``NO`` is Norway, not YAML's false."""
    if isinstance(value, dict | list):
        raise _fail(source, where, f"'{where[-1]}' must be a single value")
    return (source.as_written(where) or str(value)).strip()


def _parse_field(source: Sourced, where: NodePath, value: Any) -> object:
    key, text = str(where[-1]), _text(source, where, value)
    if key == "cidr":
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError as err:
            raise _fail(source, where, f"'cidr' is not a valid network: {err}") from None
    if key == "asn":
        digits = text[2:] if text[:2].upper() == "AS" else text
        if not (digits.isascii() and digits.isdigit()) or int(digits) >= 2**32:
            raise _fail(source, where, f"'asn' must be an AS number like 15169, not {text!r}")
        return int(digits)
    if key in ("country", "operator_country"):
        if len(text) != 2 or not text.isascii() or not text.isalpha():
            raise _fail(source, where, f"'{key}' must be a two-letter country code, not {text!r}")
        return text.upper()
    if not text:
        raise _fail(source, where, f"'{key}' is empty")
    return text


def _parse_entry(source: Sourced, where: NodePath, item: Any, label: str) -> NetworkOverride:
    if not isinstance(item, dict):
        raise _fail(source, where, "each entry must be a mapping with at least 'cidr'")
    for key in item:
        if key not in NETWORK_KEYS:
            allowed = ", ".join(NETWORK_KEYS)
            raise _fail(source, (*where, key), f"unknown key {key!r} (allowed: {allowed})", True)
    values = {
        key: _parse_field(source, (*where, key), value)
        for key, value in item.items()
        if value is not None
    }
    if "cidr" not in values:
        raise _fail(source, where, "entry has no 'cidr'")
    return NetworkOverride(**values, source=label)  # type: ignore[arg-type]


def parse_networks(source: Sourced, base: NodePath, items: Any,
                   label: str = "network") -> list[NetworkOverride]:
    """Network overrides from the list at ``base`` of a loaded YAML file.

    ``label`` is what a flow's ``attribution`` says when an entry names the
    operator: "network" for ``--networks``, "policy" for a policy's list.
    """
    if items is None:
        return []
    if not isinstance(items, list):
        raise _fail(source, base, "networks must be a YAML list of entries with 'cidr'")
    result: list[NetworkOverride] = []
    first_line: dict[IPNetwork, str] = {}
    for index, item in enumerate(items):
        entry = _parse_entry(source, (*base, index), item, label)
        if entry.cidr in first_line:
            line = first_line[entry.cidr]
            raise _fail(source, (*base, index), f"cidr {entry.cidr} already given on line {line}")
        first_line[entry.cidr] = source.where((*base, index)).split(":")[-2]
        result.append(entry)
    return result


def load_networks(path: str | Path) -> list[NetworkOverride]:
    """Read a YAML list of network overrides.

    Each entry: ``{cidr, country, asn, as_org, operator, operator_country}``,
    all but ``cidr`` optional.  An empty file is an empty list.  Problems
    raise GeoConfigError("FILE:LINE:COL: what is wrong").
    """
    try:
        source = load(path, "networks")
    except ConfigError as err:
        raise GeoConfigError(str(err)) from None
    return parse_networks(source, (), source.data)


# --------------------------------------------------------------------------
# finding database files
# --------------------------------------------------------------------------


@dataclass
class _Database:
    """One open database and what it is for."""

    kind: str  # "city" | "country" | "asn"
    path: Path
    reader: geoip2.database.Reader


def _kind_of(database_type: str) -> str | None:
    """Which lookup a database type supports (as geoip2 decides it)."""
    if "City" in database_type:
        return "city"
    if "Country" in database_type:
        return "country"
    if "GeoLite2-ASN" in database_type:
        return "asn"
    return None


def _rank(kind: str, path: Path) -> tuple[int, str]:
    """Sort key: preferred file names first, then alphabetical."""
    patterns = NAME_PREFERENCE[kind]
    name = path.name.lower()
    for index, pattern in enumerate(patterns):
        if fnmatch.fnmatch(name, pattern):
            return index, name
    return len(patterns), name


def _open(path: Path) -> geoip2.database.Reader | None:
    """Open a database, or None when it is not a readable MaxMind DB."""
    try:
        return geoip2.database.Reader(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError):
        return None


def _candidates(folder: Path) -> dict[str, list[tuple[Path, geoip2.database.Reader]]]:
    """Open every *.mmdb in folder, grouped by kind; close the unusable ones."""
    found: dict[str, list[tuple[Path, geoip2.database.Reader]]] = {}
    for path in sorted(folder.glob("*.mmdb")):
        reader = _open(path)
        if reader is None:
            continue
        kind = _kind_of(reader.metadata().database_type)
        if kind is None:
            reader.close()
            continue
        found.setdefault(kind, []).append((path, reader))
    return found


def _choose(found: dict[str, list[tuple[Path, geoip2.database.Reader]]]) -> list[_Database]:
    """Best location db (city before country) and best ASN db; close the rest."""
    chosen: list[_Database] = []
    location = "city" if found.get("city") else "country"
    for kind, entries in found.items():
        entries.sort(key=lambda entry: _rank(kind, entry[0]))
        keep = kind == "asn" or kind == location
        for index, (path, reader) in enumerate(entries):
            if keep and index == 0:
                chosen.append(_Database(kind, path, reader))
            else:
                reader.close()
    return chosen


def _open_folder(folder: Path) -> list[_Database]:
    """Open the usable databases of a folder, or raise GeoConfigError."""
    if not folder.is_dir():
        raise GeoConfigError(
            f"{folder}: geoip folder does not exist or is not a directory "
            f"(expected a folder with {EXPECTED_FILES})"
        )
    chosen = _choose(_candidates(folder))
    if not chosen:
        raise GeoConfigError(
            f"{folder}: no usable MaxMind DB (.mmdb) file found (expected {EXPECTED_FILES})"
        )
    return chosen


def _open_embedded(have: set[str]) -> list[_Database]:
    """Open the embedded databases for the kinds not in have."""
    wanted = [] if have & {"city", "country"} else ["country"]
    wanted += [] if "asn" in have else ["asn"]
    opened: list[_Database] = []
    for kind in wanted:
        path = DATA_DIR / EMBEDDED_FILES[kind]
        reader = _open(path)
        if reader is None:
            for db in opened:
                db.reader.close()
            raise GeoConfigError(
                f"{path}: embedded geolocation database missing or unreadable; "
                "rebuild with 'python -m leakmap.geodb.build' or pass a geoip folder"
            )
        opened.append(_Database(kind, path, reader))
    return opened


# --------------------------------------------------------------------------
# classifying and resolving
# --------------------------------------------------------------------------


def _parse_ip(text: str) -> IPAddress | None:
    """Address from text ('1.2.3.4', '::1', '[::1]', '::ffff:1.2.3.4')."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def scope_of(addr: IPAddress) -> str:
    """'public', 'private', 'loopback' or 'reserved' for an address.

    'private' is what stays on a local network: RFC 1918, link-local,
    unique-local (fc00::/7) and carrier-grade NAT (100.64.0.0/10).  Other
    special-purpose space (documentation, multicast, unspecified, ...) is
    'reserved'.
    """
    if addr.is_loopback:
        return "loopback"
    if addr.is_unspecified or addr.is_multicast:
        return "reserved"
    if _is_local_network(addr):
        return "private"
    return "public" if addr.is_global else "reserved"


def _is_local_network(addr: IPAddress) -> bool:
    """Link-local, RFC 1918, shared (CGNAT) or unique-local addresses."""
    if addr.is_link_local:
        return True
    if isinstance(addr, ipaddress.IPv4Address):
        return any(addr in net for net in _LOCAL_V4)
    return addr in _ULA


_LOCAL_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
)
_ULA = ipaddress.IPv6Network("fc00::/7")


def _location(db: _Database, ip: str) -> dict[str, Any]:
    """Country (and city) fields from a location database."""
    if db.kind == "city":
        city = db.reader.city(ip)
        country = city.country.iso_code or city.registered_country.iso_code
        return {"country": country, "city": city.city.name}
    found = db.reader.country(ip)
    return {"country": found.country.iso_code or found.registered_country.iso_code}


def _asn(db: _Database, ip: str) -> dict[str, Any]:
    """ASN fields from an ASN database."""
    found = db.reader.asn(ip)
    return {
        "asn": found.autonomous_system_number,
        "as_org": found.autonomous_system_organization,
    }


def _query(db: _Database, ip: str) -> dict[str, Any]:
    """Fields from one database; {} when the address is not there or on error."""
    try:
        return _asn(db, ip) if db.kind == "asn" else _location(db, ip)
    except geoip2.errors.AddressNotFoundError:
        return {}
    except Exception:  # lookup() promises never to raise (closed db, bad file)
        return {}


def _apply(fields: dict[str, Any], override: NetworkOverride) -> None:
    """Layer one override's non-null fields onto fields."""
    if override.asn is not None and override.asn != fields.get("asn"):
        fields["as_org"] = None  # the database's name belongs to another AS
    for name in OVERRIDE_FIELDS:
        value = getattr(override, name)
        if value is not None:
            fields[name] = value
    if override.operator is not None:
        fields["operator_source"] = override.source


class GeoResolver:
    """Resolves addresses with MaxMind-DB files plus network overrides."""

    def __init__(
        self,
        geoip_dir: str | Path | None = None,
        networks: Sequence[NetworkOverride] = (),
    ) -> None:
        """Open the databases of geoip_dir, or the embedded ones for None.

        Kinds a folder lacks (location or ASN) come from the embedded
        databases.  Raises GeoConfigError when nothing usable is found.
        """
        self._dbs: list[_Database] = []
        if geoip_dir is not None:
            self._dbs = _open_folder(Path(geoip_dir))
        self._dbs += _open_embedded({db.kind for db in self._dbs})
        # Least specific first, so more specific overrides are applied last.
        self._overrides = sorted(networks, key=lambda o: o.cidr.prefixlen)
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(self._resolve)

    def lookup(self, ip: str | None) -> GeoInfo:
        """Everything known about ip; never raises."""
        if not isinstance(ip, str) or not ip.strip():
            return GeoInfo(ip if isinstance(ip, str) else None, "unknown", None, None, None, None)
        return self._cached(ip)

    def _resolve(self, text: str) -> GeoInfo:
        """Uncached lookup of one address text."""
        addr = _parse_ip(text)
        if addr is None:
            return GeoInfo(text, "unknown", None, None, None, None)
        scope = scope_of(addr)
        fields: dict[str, Any] = {}
        if scope == "public":
            for db in self._dbs:
                fields.update(_query(db, str(addr)))
        for override in self._overrides:
            if addr.version == override.cidr.version and addr in override.cidr:
                _apply(fields, override)
        names = ("country", "city", "asn", "as_org", "operator", "operator_country",
                 "operator_source")
        return GeoInfo(str(addr), scope, **{name: fields.get(name) for name in names})

    def databases(self) -> list[dict[str, Any]]:
        """Describe each open database (path, type, build date, size)."""
        result = []
        for db in self._dbs:
            meta = db.reader.metadata()
            built = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
            result.append(
                {
                    "kind": db.kind,
                    "path": str(db.path),
                    "database_type": meta.database_type,
                    "build_epoch": built,
                    "node_count": meta.node_count,
                }
            )
        return result

    def close(self) -> None:
        """Close all databases; later lookups give scope-only results."""
        dbs, self._dbs = self._dbs, []
        for db in dbs:
            db.reader.close()
        self._cached.cache_clear()

    def __enter__(self) -> GeoResolver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
