"""Build leakmap's embedded geolocation databases.

Turns two free, redistributable data sets published on the npm registry by
the ip-location-db project into MaxMind-DB files that ``geoip2`` can read:

* ``@ip-location-db/geo-whois-asn-country-mmdb`` (records ``{country_code}``)
  becomes ``leakmap-country.mmdb`` in the GeoLite2-Country layout;
* ``@ip-location-db/asn`` (CSV ranges ``start,end,asn,org``) becomes
  ``leakmap-asn.mmdb`` in the GeoLite2-ASN layout.

English country names come from the small ``countries-list`` npm package; if
it is not available the records carry only ``iso_code``.  The script also
writes ``SOURCES.json`` (provenance, licences, counts and checksums).

Run ``python -m leakmap.geodb.build --out geodb/data`` (or
``python geodb/build.py``).  ``--from-dir DIR`` rebuilds offline from package
tarballs (``*.tgz``) or unpacked package folders already in DIR.

Only the standard library, ``maxminddb``, ``mmdb_writer`` and ``netaddr`` are
used, so the file also runs outside the installed package.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import ipaddress
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb
from mmdb_writer import MMDBWriter
from netaddr import IPSet, iprange_to_cidrs

COUNTRY_PACKAGE = "@ip-location-db/geo-whois-asn-country-mmdb"
ASN_PACKAGE = "@ip-location-db/asn"
NAMES_PACKAGE = "countries-list"
PINNED_VERSIONS = {
    COUNTRY_PACKAGE: "2.3.2026061719",
    ASN_PACKAGE: "2.3.2026061719",
    NAMES_PACKAGE: "3.4.1",
}
COUNTRY_FILE = "leakmap-country.mmdb"
ASN_FILE = "leakmap-asn.mmdb"
SOURCES_FILE = "SOURCES.json"
SIZE_WARNING_BYTES = 40 * 1024 * 1024
# IPv4 data lives under ::/96 (mmdb_writer's ipv4_compatible); IPv6 data must
# not land there.
IPV4_SUBTREE = ipaddress.IPv6Network("::/96")

COUNTRY_LICENCE = (
    "package.json declares CC0-1.0; the README lists the data as "
    "'CC BY 4.0 by NRO' and NRO_LICENSE asks for attribution to nro.net"
)
COUNTRY_ATTRIBUTION = (
    "Country data: ip-location-db geo-whois-asn-country (https://github.com/"
    "sapics/ip-location-db), built from GeoFeed, RIR WHOIS and RIR ASN data; "
    "statistics data by the Number Resource Organization (NRO), "
    "https://www.nro.net, licensed CC BY 4.0."
)
ASN_LICENCE = "CC BY 4.0 (RouteViews, DB-IP IP to ASN Lite, NRO)"
ASN_ATTRIBUTION = (
    "ASN data: ip-location-db asn (https://github.com/sapics/ip-location-db), "
    "built from RouteViews (https://www.routeviews.org), the NRO "
    "(https://www.nro.net) and DB-IP IP to ASN Lite; "
    "IP Geolocation by DB-IP (https://db-ip.com); licensed CC BY 4.0."
)
NAMES_LICENCE = "MIT"
NAMES_ATTRIBUTION = "Country names: countries-list by Annexare Studio (MIT)."
NAMES_JSON = "minimal/countries.en.min.json"

# Well-known addresses that any sane build resolves this way.
SMOKE_COUNTRY = {"8.8.8.8": "US"}
SMOKE_ASN = {"8.8.8.8": 15169, "1.1.1.1": 13335}


class BuildError(Exception):
    """A problem that stops the build; the message is shown to the user."""


@dataclass
class Package:
    """An unpacked npm package and what is known about where it came from."""

    name: str
    version: str
    root: Path
    integrity: str | None = None
    licence_files: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Provenance entry for SOURCES.json."""
        return {
            "package": self.name,
            "version": self.version,
            "registry": "npm",
            "integrity": self.integrity,
            "licence_files": self.licence_files,
        }


class EpochWriter(MMDBWriter):
    """MMDBWriter whose build_epoch is the source's date, not 'now'.

    A fixed epoch makes rebuilds from the same sources byte-identical.
    """

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self.build_epoch
        return meta


# --------------------------------------------------------------------------
# Getting the packages
# --------------------------------------------------------------------------


def npm_pack(spec: str, dest: Path) -> tuple[Path, str | None]:
    """Download one package tarball with ``npm pack``; return path, integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm not found on PATH; install it or use --from-dir")
    cmd = [npm, "pack", spec, "--json", "--pack-destination", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"npm pack {spec} failed:\n{proc.stderr.strip()}")
    info = json.loads(proc.stdout)[0]
    return dest / info["filename"], info.get("integrity")


def unpack(tgz: Path, dest: Path) -> Path:
    """Unpack an npm tarball into dest; return the package root folder."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as err:
        raise BuildError(f"{tgz}: cannot unpack: {err}") from err
    root = dest / "package"
    if not (root / "package.json").is_file():
        raise BuildError(f"{tgz}: no package/package.json inside")
    return root


def sri_sha512(path: Path) -> str:
    """Subresource-integrity string (as npm reports it) for a file."""
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


def read_package(root: Path, integrity: str | None) -> Package:
    """Describe an unpacked package folder from its package.json."""
    try:
        meta = json.loads((root / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BuildError(f"{root / 'package.json'}: unreadable: {err}") from err
    licences = {
        p.name: p.read_text(encoding="utf-8").strip()
        for p in sorted(root.iterdir())
        if p.is_file() and ("LICENSE" in p.name.upper() or p.name == "MODIFICATIONS")
    }
    return Package(str(meta.get("name")), str(meta.get("version")), root, integrity, licences)


def fetch_packages(names: Iterable[str], work: Path) -> dict[str, Package]:
    """npm-pack and unpack the pinned versions of the named packages."""
    found: dict[str, Package] = {}
    for index, name in enumerate(names):
        spec = f"{name}@{PINNED_VERSIONS[name]}"
        print(f"npm pack {spec}", file=sys.stderr)
        tgz, integrity = npm_pack(spec, work)
        root = unpack(tgz, work / f"pkg{index}")
        found[name] = read_package(root, integrity)
    return found


def package_roots(src: Path, work: Path) -> Iterator[tuple[Path, str | None]]:
    """Package folders under src: unpacked ones and unpacked *.tgz files."""
    for index, tgz in enumerate(sorted(src.glob("*.tgz"))):
        yield unpack(tgz, work / f"tgz{index}"), sri_sha512(tgz)
    for pkg_json in (
        sorted(src.glob("package.json"))
        + sorted(src.glob("*/package.json"))
        + sorted(src.glob("*/*/package.json"))
    ):
        yield pkg_json.parent, None


def collect_packages(src: Path, work: Path) -> dict[str, Package]:
    """Find the wanted packages in a --from-dir folder."""
    if not src.is_dir():
        raise BuildError(f"{src}: --from-dir is not a directory")
    found: dict[str, Package] = {}
    for root, integrity in package_roots(src, work):
        pkg = read_package(root, integrity)
        if pkg.name in PINNED_VERSIONS and pkg.name not in found:
            found[pkg.name] = pkg
    for name in (COUNTRY_PACKAGE, ASN_PACKAGE):
        if name not in found:
            raise BuildError(f"{src}: package {name} not found (tgz or unpacked)")
    for pkg in found.values():
        if pkg.version != PINNED_VERSIONS[pkg.name]:
            print(
                f"note: using {pkg.name} {pkg.version}, pinned is {PINNED_VERSIONS[pkg.name]}",
                file=sys.stderr,
            )
    return found


# --------------------------------------------------------------------------
# Converting
# --------------------------------------------------------------------------


def version_epoch(version: str) -> int:
    """ip-location-db versions end in YYYYMMDDHH (UTC); turn that into epoch."""
    stamp = version.rsplit(".", 1)[-1]
    try:
        when = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC)
    except ValueError as err:
        raise BuildError(f"cannot read a build date from version {version}") from err
    return int(when.timestamp())


def iso_time(epoch: int) -> str:
    """Epoch seconds as an ISO-8601 UTC timestamp."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_names(pkg: Package | None) -> dict[str, str]:
    """ISO alpha-2 code -> English name, or {} without a names package."""
    path = None if pkg is None else pkg.root / NAMES_JSON
    if path is None or not path.is_file():
        print("note: no country names source, writing iso_code only", file=sys.stderr)
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {str(code).upper(): str(name) for code, name in data.items()}


def country_record(code: str, names: dict[str, str]) -> dict[str, Any]:
    """A GeoIP2-Country style record for one ISO code."""
    country: dict[str, Any] = {"iso_code": code}
    if code in names:
        country["names"] = {"en": names[code]}
    return {"country": country}


def usable_v6(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """False for IPv6 networks that would collide with the IPv4 subtree."""
    return not (isinstance(net, ipaddress.IPv6Network) and net.overlaps(IPV4_SUBTREE))


def insert_groups(
    writer: MMDBWriter, groups: dict[Any, list[str]], records: dict[Any, Any]
) -> None:
    """Insert each group of CIDRs (merged by netaddr) under its record."""
    for key, cidrs in groups.items():
        writer.insert_network(IPSet(cidrs), records[key])


def country_groups(src: Path) -> dict[str, list[str]]:
    """Read the source country mmdb: ISO code -> list of CIDR strings."""
    groups: dict[str, list[str]] = {}
    with maxminddb.open_database(str(src)) as reader:
        for net, record in reader:
            if not isinstance(record, dict) or not usable_v6(net):
                continue
            code = str(record.get("country_code") or "").upper()
            if len(code) == 2:
                groups.setdefault(code, []).append(str(net))
    return groups


def source_epoch(src: Path) -> int:
    """build_epoch stored in a source mmdb's metadata."""
    with maxminddb.open_database(str(src)) as reader:
        return int(reader.metadata().build_epoch)


def build_country(pkg: Package, names: dict[str, str], out: Path) -> dict[str, Any]:
    """Write leakmap-country.mmdb; return its SOURCES.json entry."""
    src = pkg.root / "geo-whois-asn-country.mmdb"
    if not src.is_file():
        raise BuildError(f"{src}: missing from {pkg.name} {pkg.version}")
    epoch = source_epoch(src)
    groups = country_groups(src)
    desc = (
        f"leakmap country database from {pkg.name} {pkg.version} "
        f"(source built {iso_time(epoch)}). {COUNTRY_ATTRIBUTION}"
    )
    writer = EpochWriter(
        epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-Country",
        languages=["en"],
        description={"en": desc},
    )
    insert_groups(writer, groups, {code: country_record(code, names) for code in groups})
    writer.to_db_file(str(out))
    return {
        "source": pkg.describe(),
        "source_build_date": iso_time(epoch),
        "licence": COUNTRY_LICENCE,
        "attribution": COUNTRY_ATTRIBUTION,
    }


def read_ranges(csv_path: Path, clipped: list[int]) -> Iterator[tuple[str, str, int, str]]:
    """Yield non-overlapping (start, end, asn, org) rows from one ASN CSV.

    Rows are sorted by start; a row overlapping an earlier one is clipped to
    begin after it (first row wins) and counted in clipped[0].  IPv6 rows are
    kept out of ::/96, where the IPv4 data lives.
    """
    last_end = -1
    with csv_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.reader(fh):
            if len(row) < 4 or not row[2].strip().isdigit():
                continue
            start = int(ipaddress.ip_address(row[0].strip()))
            end = int(ipaddress.ip_address(row[1].strip()))
            if start <= last_end:
                clipped[0] += 1
            lowest = 2**32 if ":" in row[0] else 0
            start = max(start, last_end + 1, lowest)
            if start > end:
                continue
            last_end = end
            yield _addr(start, row[0]), _addr(end, row[0]), int(row[2]), row[3].strip()


def _addr(value: int, like: str) -> str:
    """Integer address back to text, in the family of the sample string."""
    family = ipaddress.IPv6Address if ":" in like else ipaddress.IPv4Address
    return str(family(value))


def asn_groups(pkg: Package, clipped: list[int]) -> tuple[dict[Any, list[str]], dict[Any, Any]]:
    """Group the CSV ranges by (asn, org) as CIDR strings, plus records."""
    groups: dict[Any, list[str]] = {}
    records: dict[Any, Any] = {}
    for name in ("asn-ipv4.csv", "asn-ipv6.csv"):
        path = pkg.root / name
        if not path.is_file():
            raise BuildError(f"{path}: missing from {pkg.name} {pkg.version}")
        for start, end, asn, org in read_ranges(path, clipped):
            key = (asn, org)
            if key not in records:
                records[key] = asn_record(asn, org)
            cidrs = groups.setdefault(key, [])
            cidrs.extend(str(cidr) for cidr in iprange_to_cidrs(start, end))
    return groups, records


def asn_record(asn: int, org: str) -> dict[str, Any]:
    """A GeoLite2-ASN style record."""
    record: dict[str, Any] = {"autonomous_system_number": asn}
    if org:
        record["autonomous_system_organization"] = org
    return record


def build_asn(pkg: Package, out: Path) -> dict[str, Any]:
    """Write leakmap-asn.mmdb; return its SOURCES.json entry."""
    epoch = version_epoch(pkg.version)
    clipped = [0]
    groups, records = asn_groups(pkg, clipped)
    desc = (
        f"leakmap ASN database from {pkg.name} {pkg.version} "
        f"(source built {iso_time(epoch)}). {ASN_ATTRIBUTION}"
    )
    writer = EpochWriter(
        epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-ASN",
        languages=["en"],
        description={"en": desc},
        int_type="u32",
    )
    insert_groups(writer, groups, records)
    writer.to_db_file(str(out))
    return {
        "source": pkg.describe(),
        "source_build_date": iso_time(epoch),
        "licence": ASN_LICENCE,
        "attribution": ASN_ATTRIBUTION,
        "overlapping_rows_clipped": clipped[0],
    }


# --------------------------------------------------------------------------
# Checking and recording
# --------------------------------------------------------------------------


def file_facts(path: Path) -> dict[str, Any]:
    """Counts and checksum of a built mmdb, read back with maxminddb."""
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        networks = sum(1 for _ in reader)
        facts = {
            "database_type": meta.database_type,
            "build_epoch": meta.build_epoch,
            "node_count": meta.node_count,
            "record_size": meta.record_size,
            "networks": networks,
        }
    facts["size_bytes"] = path.stat().st_size
    facts["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return facts


def smoke_check(country: Path, asn: Path) -> None:
    """Fail the build if well-known addresses do not resolve as expected."""
    with maxminddb.open_database(str(country)) as reader:
        for ip, code in SMOKE_COUNTRY.items():
            got = (reader.get(ip) or {}).get("country", {}).get("iso_code")  # type: ignore[union-attr]
            if got != code:
                raise BuildError(f"check failed: {ip} country {got!r}, expected {code}")
    with maxminddb.open_database(str(asn)) as reader:
        for ip, number in SMOKE_ASN.items():
            got = (reader.get(ip) or {}).get("autonomous_system_number")  # type: ignore[union-attr]
            if got != number:
                raise BuildError(f"check failed: {ip} AS{got}, expected AS{number}")


def write_sources(out: Path, entries: dict[str, dict[str, Any]], names: Package | None) -> None:
    """Write SOURCES.json next to the built files."""
    doc = {
        "generated_by": "leakmap.geodb.build",
        "files": entries,
        "country_names": None
        if names is None
        else {
            "source": names.describe(),
            "file": NAMES_JSON,
            "licence": NAMES_LICENCE,
            "attribution": NAMES_ATTRIBUTION,
        },
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    (out / SOURCES_FILE).write_text(text, encoding="utf-8")


def report(entries: dict[str, dict[str, Any]]) -> None:
    """Print sizes and network counts; warn about oversized files."""
    for name, entry in entries.items():
        size = entry["size_bytes"]
        print(
            f"{name}: {size / 1e6:.1f} MB, {entry['networks']} networks, "
            f"{entry['node_count']} nodes",
            file=sys.stderr,
        )
        if size > SIZE_WARNING_BYTES:
            print(f"warning: {name} is larger than 40 MiB", file=sys.stderr)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m leakmap.geodb.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "data",
        help="output folder (default: the package's data folder)",
    )
    parser.add_argument(
        "--from-dir",
        type=Path,
        default=None,
        help="offline: folder with the npm tarballs or unpacked packages",
    )
    parser.add_argument(
        "--skip-check",
        action="store_true",
        help="do not check well-known addresses (for test data)",
    )
    return parser.parse_args(argv)


def build(out: Path, packages: dict[str, Package], check: bool) -> dict[str, dict[str, Any]]:
    """Build both databases and SOURCES.json into out."""
    out.mkdir(parents=True, exist_ok=True)
    names_pkg = packages.get(NAMES_PACKAGE)
    names = load_names(names_pkg)
    entries: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    entries[COUNTRY_FILE] = build_country(packages[COUNTRY_PACKAGE], names, out / COUNTRY_FILE)
    print(f"country done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    entries[ASN_FILE] = build_asn(packages[ASN_PACKAGE], out / ASN_FILE)
    print(f"asn done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    if check:
        smoke_check(out / COUNTRY_FILE, out / ASN_FILE)
    for name, entry in entries.items():
        entry.update(file_facts(out / name))
    write_sources(out, entries, names_pkg)
    return entries


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="leakmap-geodb-") as tmp:
            work = Path(tmp)
            if args.from_dir is not None:
                packages = collect_packages(args.from_dir, work)
            else:
                packages = fetch_packages(PINNED_VERSIONS, work)
            report(build(args.out, packages, not args.skip_check))
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
