"""Tests for leakmap.geodb.inventory: counting networks, describing databases.

No mocks: MaxMind's own test databases (vendored in tests/data/maxmind),
the embedded databases as shipped, and small databases written here with
mmdb_writer.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import maxminddb
import pytest
from maxminddb.reader import Metadata
from mmdb_writer import MMDBWriter, TreeWriter
from netaddr import IPSet

from leakmap.geodb.inventory import (
    DEFAULT_MAX_AGE_DAYS,
    DatabaseInfo,
    count_networks,
    describe,
    stale_warnings,
)
from leakmap.geodb.lookup import DATA_DIR, GeoResolver

MAXMIND_DIR = Path(__file__).resolve().parent / "data" / "maxmind"
CITY_TEST = MAXMIND_DIR / "GeoIP2-City-Test.mmdb"
COUNTRY_TEST = MAXMIND_DIR / "GeoIP2-Country-Test.mmdb"
ASN_TEST = MAXMIND_DIR / "GeoLite2-ASN-Test.mmdb"
# build_epoch of the three vendored files: 2026-02-04T22:49:29Z
MAXMIND_BUILT = datetime(2026, 2, 4, 22, 49, 29, tzinfo=UTC)


def iterated(path: Path) -> int:
    """Networks as maxminddb's own iteration yields them."""
    with maxminddb.open_database(str(path)) as reader:
        return sum(1 for _ in reader)


def metadata(path: Path) -> Metadata:
    with maxminddb.open_database(str(path)) as reader:
        return reader.metadata()


class FixedSizeTreeWriter(TreeWriter):
    """mmdb_writer's TreeWriter with a chosen (not the smallest) record size."""

    def __init__(self, writer: MMDBWriter, record_size: int) -> None:
        super().__init__(writer.tree, writer._build_meta())
        self.forced_size = record_size

    def _adjust_record_size(self) -> None:
        self.record_size = self.forced_size
        self.data_offset = self.record_size * 2 / 8 * self._node_counter


def write_db(path: Path, networks: list[str], record_size: int | None = None, ip_version: int = 4) -> Path:
    """A database with one record per network (adjacent ones must not merge)."""
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type="Test-DB")
    for index, cidr in enumerate(networks):
        writer.insert_network(IPSet([cidr]), {"index": index})
    if record_size is None:
        writer.to_db_file(str(path))
    else:
        FixedSizeTreeWriter(writer, record_size).write(str(path))
    return path


# --------------------------------------------------------------------------
# count_networks
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected", "ipv4"),
    [(CITY_TEST, 250, 20), (COUNTRY_TEST, 345, 19), (ASN_TEST, 412, 182)],
    ids=["city", "country", "asn"],
)
def test_maxmind_test_dbs_count_each_network_once(path: Path, expected: int, ipv4: int) -> None:
    assert metadata(path).record_size == 28
    assert count_networks(path) == iterated(path) == expected
    with maxminddb.open_database(str(path)) as reader:
        v4 = [network for network, _ in reader if network.version == 4]
        assert len(v4) == ipv4
        # These IPv6 files alias ::ffff:0:0/96 and 2002::/16 to the IPv4
        # subtree: the same IPv4 network is reachable three ways ...
        first = v4[0]
        record, prefix = reader.get_with_prefix_len(str(first.network_address))
        mapped = reader.get_with_prefix_len(f"::ffff:{first.network_address}")
        hexed = first.network_address.packed.hex()
        six_to_four = reader.get_with_prefix_len(f"2002:{hexed[:4]}:{hexed[4:]}::")
    assert prefix == first.prefixlen
    assert mapped == (record, 96 + first.prefixlen)
    assert six_to_four == (record, 16 + first.prefixlen)
    # ... but the alias records are node pointers, not data, so the linear
    # count is not expected + 2 * ipv4.
    assert count_networks(path) != expected + 2 * ipv4


def test_maxmind_alias_for_a_known_network() -> None:
    with maxminddb.open_database(str(CITY_TEST)) as reader:
        direct = reader.get_with_prefix_len("81.2.69.142")
        assert direct[1] == 31
        assert reader.get_with_prefix_len("::ffff:81.2.69.142") == (direct[0], 127)
        assert reader.get_with_prefix_len("2002:5102:458e::") == (direct[0], 47)
    assert count_networks(CITY_TEST) == 250


NETWORKS = ["1.2.3.0/24", "8.8.8.0/24", "10.0.0.0/8", "192.0.2.128/25", "203.0.113.7/32"]


@pytest.mark.parametrize("record_size", [24, 28, 32])
def test_count_for_each_record_size(tmp_path: Path, record_size: int) -> None:
    path = write_db(tmp_path / f"r{record_size}.mmdb", NETWORKS, record_size)
    assert metadata(path).record_size == record_size
    assert count_networks(path) == iterated(path) == len(NETWORKS)


def test_count_is_leaves_not_inserted_rows(tmp_path: Path) -> None:
    # A /16 inside a /8 splits the /8 into the 8 sibling networks along the
    # path (10.0/9, 10.64/10, ... 10.0/16) plus the /16 itself.
    path = write_db(tmp_path / "split.mmdb", ["10.0.0.0/8", "10.1.0.0/16"])
    assert count_networks(path) == iterated(path) == 9


def test_count_ipv6_database_with_ipv4_subtree(tmp_path: Path) -> None:
    path = write_db(tmp_path / "v6.mmdb", [*NETWORKS, "2001:db8::/32", "2a00:1450::/29"], ip_version=6)
    assert metadata(path).ip_version == 6
    assert count_networks(path) == iterated(path) == len(NETWORKS) + 2


BLOBS = 9


def test_count_28_bit_records_with_high_nibbles(tmp_path: Path) -> None:
    """Data pointers above 2**24 put bits in the shared middle byte of each node."""
    writer = MMDBWriter(ip_version=4, database_type="Test-DB")
    # Records are written left to right: nine distinct 2 MB values (readers
    # refuse more than 2 MiB per lookup) in 0.0.0.0/8 push every later
    # record's data pointer past 2**24.
    for index in range(BLOBS):
        writer.insert_network(IPSet([f"0.{16 * index}.0.0/12"]), {"blob": bytes([index]) * 2_000_000})
    for index, cidr in enumerate(NETWORKS):
        writer.insert_network(IPSet([cidr]), {"index": index})
    path = tmp_path / "big28.mmdb"
    writer.to_db_file(str(path))
    meta = metadata(path)
    assert meta.record_size == 28
    tree = path.read_bytes()[: meta.node_count * 7]
    middle = tree[3::7]
    assert any(byte >> 4 for byte in middle), "no left record uses its high nibble"
    assert any(byte & 0x0F for byte in middle), "no right record uses its high nibble"
    assert any((byte >> 4) != (byte & 0x0F) for byte in middle), "nibble order would not matter"
    assert count_networks(path) == iterated(path) == len(NETWORKS) + BLOBS


def test_count_empty_database(tmp_path: Path) -> None:
    path = write_db(tmp_path / "empty.mmdb", [])
    assert count_networks(path) == iterated(path) == 0


@pytest.mark.parametrize("name", ["leakmap-country.mmdb", "leakmap-asn.mmdb"])
def test_count_embedded_equals_sources(name: str) -> None:
    sources = json.loads((DATA_DIR / "SOURCES.json").read_text(encoding="utf-8"))
    assert count_networks(DATA_DIR / name) == sources["files"][name]["networks"]


@pytest.mark.parametrize("content", [b"not a database\n", b"", b"\xab\xcd\xefMaxMind.com" + b"\x00" * 64])
def test_count_rejects_non_mmdb_with_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "GeoLite2-City.mmdb"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable MaxMind DB")):
        count_networks(path)


def test_count_missing_file_is_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        count_networks(tmp_path / "missing.mmdb")


# --------------------------------------------------------------------------
# describe
# --------------------------------------------------------------------------


def test_describe_vendored_files() -> None:
    now = MAXMIND_BUILT + timedelta(days=10, hours=3)
    infos = describe([("city", CITY_TEST), ("asn", ASN_TEST)], 180, now, DATA_DIR)
    city, asn = infos
    assert city == DatabaseInfo(
        kind="city",
        path=str(CITY_TEST),
        database_type="GeoIP2-City",
        description="GeoIP2 City Test Database (fake GeoIP2 data, for example purposes only)",
        build_date="2026-02-04",
        age_days=10,
        networks=250,
        ip_version=6,
        node_count=1547,
        size_bytes=CITY_TEST.stat().st_size,
        embedded=False,
        stale=False,
    )
    assert (asn.kind, asn.database_type, asn.networks, asn.embedded) == ("asn", "GeoLite2-ASN", 412, False)
    assert json.loads(json.dumps(city.as_dict()))["networks"] == 250


def test_describe_embedded_from_resolver() -> None:
    sources = json.loads((DATA_DIR / "SOURCES.json").read_text(encoding="utf-8"))["files"]
    now = datetime(2026, 7, 1, tzinfo=UTC)
    with GeoResolver() as geo:
        pairs = [(db["kind"], Path(db["path"])) for db in geo.databases()]
    infos = describe(pairs, DEFAULT_MAX_AGE_DAYS, now, DATA_DIR)
    assert [info.kind for info in infos] == ["country", "asn"]
    for info in infos:
        entry = sources[Path(info.path).name]
        assert info.embedded
        assert info.networks == entry["networks"]
        assert info.node_count == entry["node_count"]
        assert info.size_bytes == entry["size_bytes"]
        built = datetime.fromtimestamp(entry["build_epoch"], UTC)
        assert info.age_days == (now - built).days
        assert not info.stale


def make_embedded_dir(folder: Path, networks: int, sha256: str | None = None) -> Path:
    """A copy of the city test db with a SOURCES.json recording networks."""
    folder.mkdir()
    path = folder / "leakmap-city.mmdb"
    shutil.copyfile(CITY_TEST, path)
    digest = sha256 or hashlib.sha256(path.read_bytes()).hexdigest()
    sources = {"files": {path.name: {"networks": networks, "sha256": digest}}}
    (folder / "SOURCES.json").write_text(json.dumps(sources), encoding="utf-8")
    return path


def test_describe_takes_networks_from_sources_when_sha256_matches(tmp_path: Path) -> None:
    path = make_embedded_dir(tmp_path / "data", networks=12345)
    [info] = describe([("city", path)], 180, MAXMIND_BUILT, tmp_path / "data")
    assert (info.embedded, info.networks) == (True, 12345)


def test_describe_counts_when_sha256_differs(tmp_path: Path) -> None:
    path = make_embedded_dir(tmp_path / "data", networks=12345, sha256="0" * 64)
    [info] = describe([("city", path)], 180, MAXMIND_BUILT, tmp_path / "data")
    assert (info.embedded, info.networks) == (True, 250)


def test_describe_counts_outside_embedded_dir(tmp_path: Path) -> None:
    path = make_embedded_dir(tmp_path / "data", networks=12345)
    [info] = describe([("city", path)], 180, MAXMIND_BUILT, DATA_DIR)
    assert (info.embedded, info.networks) == (False, 250)


def test_describe_rejects_non_mmdb(tmp_path: Path) -> None:
    path = tmp_path / "broken.mmdb"
    path.write_text("nope", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(str(path))):
        describe([("city", path)], 180, MAXMIND_BUILT, DATA_DIR)


# --------------------------------------------------------------------------
# staleness
# --------------------------------------------------------------------------


def test_stale_boundary_with_fixed_now() -> None:
    exactly = MAXMIND_BUILT + timedelta(days=180)
    [fresh] = describe([("city", CITY_TEST)], 180, exactly, DATA_DIR)
    assert (fresh.age_days, fresh.stale) == (180, False)
    assert stale_warnings([fresh], 180) == []
    [old] = describe([("city", CITY_TEST)], 180, exactly + timedelta(days=1), DATA_DIR)
    assert (old.age_days, old.stale) == (181, True)
    assert stale_warnings([old], 180) == [
        f"geoip: {CITY_TEST} was built 2026-02-04 (181 days ago, older than 180 days); "
        "update it or pass --geoip-dir with newer files"
    ]


def test_naive_now_is_utc() -> None:
    naive = (MAXMIND_BUILT + timedelta(days=3)).replace(tzinfo=None)
    [info] = describe([("city", CITY_TEST)], 180, naive, DATA_DIR)
    assert info.age_days == 3


def test_stale_warnings_embedded_and_limit() -> None:
    now = datetime(2027, 6, 1, tzinfo=UTC)
    with GeoResolver() as geo:
        pairs = [(db["kind"], Path(db["path"])) for db in geo.databases()]
    infos = describe(pairs, DEFAULT_MAX_AGE_DAYS, now, DATA_DIR)
    assert all(info.stale for info in infos)
    lines = stale_warnings(infos, DEFAULT_MAX_AGE_DAYS)
    assert len(lines) == 2
    assert all("rebuild it with 'python -m leakmap.geodb.build'" in line for line in lines)
    assert all("older than 180 days" in line for line in lines)
    # A larger limit passed here wins over the stale flag computed earlier.
    assert stale_warnings(infos, 10_000) == []


# --------------------------------------------------------------------------
# GeoResolver on the vendored MaxMind test databases
# --------------------------------------------------------------------------


def test_resolver_picks_maxmind_test_files() -> None:
    with GeoResolver(geoip_dir=MAXMIND_DIR) as geo:
        chosen = {db["kind"]: Path(db["path"]).name for db in geo.databases()}
        assert chosen == {"city": "GeoIP2-City-Test.mmdb", "asn": "GeoLite2-ASN-Test.mmdb"}
        cn, us, gb = (geo.lookup(ip) for ip in ("175.16.199.5", "216.160.83.56", "81.2.69.142"))
        singapore, sweden = geo.lookup("214.0.0.1"), geo.lookup("89.160.20.115")
    assert (cn.country, cn.city, cn.asn) == ("CN", "Changchun", None)
    assert (us.country, us.city, us.asn) == ("US", "Milton", 209)
    assert (gb.country, gb.city, gb.asn) == ("GB", "London", None)
    assert (singapore.country, singapore.city, singapore.asn, singapore.as_org) == (
        "SG",
        "Singapore",
        721,
        "DoD Network Information Center",
    )
    assert (sweden.country, sweden.city, sweden.asn, sweden.as_org) == (
        "SE",
        "Linköping",
        29518,
        "Bredband2 AB",
    )
