"""Tests for leakmap.geodb: embedded databases, lookups, overrides, config errors.

No mocks: the embedded databases are used as shipped, and the small
databases some tests need are written here with mmdb_writer.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from pathlib import Path

import geoip2.database
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from leakmap.geodb import build
from leakmap.geodb.lookup import (
    GeoConfigError,
    GeoResolver,
    NetworkOverride,
    load_networks,
)


@pytest.fixture(scope="module")
def resolver() -> Iterator[GeoResolver]:
    with GeoResolver() as geo:
        yield geo


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def write_city_db(path: Path, cidr: str, city: str, country: str) -> None:
    """A tiny IPv4 database in the GeoLite2-City layout."""
    writer = MMDBWriter(
        ip_version=4,
        database_type="GeoLite2-City",
        languages=["en"],
        description={"en": "leakmap test city db"},
    )
    record = {
        "city": {"names": {"en": city}},
        "country": {"iso_code": country, "names": {"en": country}},
    }
    writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))


def write_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# embedded databases
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "country", "asn", "org_word"),
    [
        ("8.8.8.8", "US", 15169, "Google"),
        ("13.228.0.1", "SG", 16509, "Amazon"),
        ("52.74.0.1", "SG", 16509, "Amazon"),
        ("1.1.1.1", None, 13335, "Cloudflare"),
        ("220.181.38.148", "CN", None, None),
        ("111.13.100.91", "CN", None, None),
        ("2001:4860:4860::8888", "US", 15169, "Google"),
        ("2606:4700:4700::1111", None, 13335, "Cloudflare"),
    ],
)
def test_embedded_resolves_known_addresses(
    resolver: GeoResolver, ip: str, country: str | None, asn: int | None, org_word: str | None
) -> None:
    info = resolver.lookup(ip)
    assert info.scope == "public"
    assert info.ip == ip
    assert info.country is not None and len(info.country) == 2
    if country is not None:
        assert info.country == country
    if asn is not None:
        assert info.asn == asn
    else:
        assert info.asn is not None
    if org_word is not None:
        assert info.as_org is not None and org_word in info.as_org
    assert info.city is None  # the embedded data is country level
    assert info.operator is None


def test_embedded_files_open_with_geoip2_directly() -> None:
    data = Path(build.__file__).parent / "data"
    with geoip2.database.Reader(str(data / build.COUNTRY_FILE)) as reader:
        found = reader.country("52.74.0.1")
        assert found.country.iso_code == "SG"
        assert found.country.name == "Singapore"
    with geoip2.database.Reader(str(data / build.ASN_FILE)) as reader:
        assert reader.asn("8.8.8.8").autonomous_system_number == 15169


def test_embedded_sources_json_matches_files() -> None:
    data = Path(build.__file__).parent / "data"
    sources = json.loads((data / build.SOURCES_FILE).read_text(encoding="utf-8"))
    for name in (build.COUNTRY_FILE, build.ASN_FILE):
        entry = sources["files"][name]
        assert entry["size_bytes"] == (data / name).stat().st_size
        assert entry["networks"] > 100_000
        assert entry["source"]["version"]
        assert entry["attribution"]


def test_databases_describes_embedded(resolver: GeoResolver) -> None:
    dbs = resolver.databases()
    types = sorted(db["database_type"] for db in dbs)
    assert types == ["GeoLite2-ASN", "GeoLite2-Country"]
    for db in dbs:
        assert Path(str(db["path"])).is_file()
        assert len(str(db["build_epoch"])) == 10  # YYYY-MM-DD
        assert int(str(db["node_count"])) > 0


def test_ipv4_mapped_and_bracketed_addresses(resolver: GeoResolver) -> None:
    mapped = resolver.lookup("::ffff:8.8.8.8")
    assert (mapped.ip, mapped.country, mapped.asn) == ("8.8.8.8", "US", 15169)
    bracketed = resolver.lookup("[2001:4860:4860::8888]")
    assert bracketed.country == "US"


# --------------------------------------------------------------------------
# scopes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.10", "private"),
        ("100.64.0.1", "private"),
        ("169.254.10.1", "private"),
        ("fe80::1", "private"),
        ("fd12:3456::1", "private"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "reserved"),
        ("::", "reserved"),
        ("224.0.0.251", "reserved"),
        ("ff02::fb", "reserved"),
        ("192.0.2.1", "reserved"),
        ("2001:db8::1", "reserved"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_non_public_scopes_have_no_geo(resolver: GeoResolver, ip: str, scope: str) -> None:
    info = resolver.lookup(ip)
    assert info.scope == scope
    assert (info.country, info.city, info.asn, info.as_org) == (None, None, None, None)


@pytest.mark.parametrize("value", [None, "", "   ", "not-an-ip", "999.1.1.1", "example.com"])
def test_unknown_input_never_raises(resolver: GeoResolver, value: str | None) -> None:
    info = resolver.lookup(value)
    assert info.scope == "unknown"
    assert info.country is None and info.asn is None


def test_as_dict_has_all_fields(resolver: GeoResolver) -> None:
    data = resolver.lookup("8.8.8.8").as_dict()
    assert set(data) == {
        "ip",
        "scope",
        "country",
        "city",
        "asn",
        "as_org",
        "operator",
        "operator_country",
        "operator_source",
    }
    assert data["asn"] == 15169


def test_results_are_cached(resolver: GeoResolver) -> None:
    assert resolver.lookup("8.8.4.4") is resolver.lookup("8.8.4.4")


def test_lookup_after_close_returns_empty_info() -> None:
    geo = GeoResolver()
    geo.close()
    info = geo.lookup("8.8.8.8")
    assert info.scope == "public"
    assert info.country is None and info.asn is None


# --------------------------------------------------------------------------
# overrides
# --------------------------------------------------------------------------


def test_most_specific_override_wins_and_less_specific_fill_in() -> None:
    overrides = [
        NetworkOverride(net("10.1.0.0/16"), country="FR", asn=64512),
        NetworkOverride(net("10.0.0.0/8"), country="DE", operator="Lab", operator_country="DE"),
        NetworkOverride(net("10.1.2.0/24"), operator="Bench"),
    ]
    with GeoResolver(networks=overrides) as geo:
        inner = geo.lookup("10.1.2.3")
        assert inner.scope == "private"
        assert (inner.country, inner.asn, inner.operator) == ("FR", 64512, "Bench")
        assert inner.operator_country == "DE"
        middle = geo.lookup("10.1.9.9")
        assert (middle.country, middle.operator) == ("FR", "Lab")
        outer = geo.lookup("10.200.0.1")
        assert (outer.country, outer.asn, outer.operator) == ("DE", None, "Lab")
        assert geo.lookup("192.168.0.1").operator is None


def test_override_on_public_address_keeps_database_fields() -> None:
    overrides = [
        NetworkOverride(net("8.8.8.0/24"), operator="Google Public DNS", operator_country="US"),
        NetworkOverride(net("1.1.1.1/32"), asn=64500),
        NetworkOverride(net("2606:4700::/32"), country="NL"),
    ]
    with GeoResolver(networks=overrides) as geo:
        google = geo.lookup("8.8.8.8")
        assert (google.country, google.asn) == ("US", 15169)
        assert google.as_org is not None and "Google" in google.as_org
        assert google.operator == "Google Public DNS"
        cloudflare = geo.lookup("1.1.1.1")
        assert (cloudflare.asn, cloudflare.as_org) == (64500, None)  # org was AS13335's
        assert geo.lookup("2606:4700:4700::1111").country == "NL"
        assert geo.lookup("1.0.0.1").asn == 13335


# --------------------------------------------------------------------------
# networks YAML
# --------------------------------------------------------------------------


def test_load_networks_reads_entries(tmp_path: Path) -> None:
    path = write_file(
        tmp_path / "networks.yaml",
        (
            "- cidr: 10.0.0.0/8\n"
            "  country: de\n"
            "  operator: Lab network\n"
            "- cidr: 2001:db8::/32\n"
            "  asn: AS64496\n"
            "  as_org: Example\n"
            "  operator_country: ~\n"
            "- cidr: 192.0.2.7\n"
        ),
    )
    entries = load_networks(path)
    assert entries == [
        NetworkOverride(net("10.0.0.0/8"), country="DE", operator="Lab network"),
        NetworkOverride(net("2001:db8::/32"), asn=64496, as_org="Example"),
        NetworkOverride(net("192.0.2.7/32")),
    ]


def test_load_networks_empty_file_is_empty_list(tmp_path: Path) -> None:
    assert load_networks(write_file(tmp_path / "n.yaml", "# nothing yet\n")) == []


@pytest.mark.parametrize(
    ("text", "line", "col", "words"),
    [
        ("- cidr: 10.0.0.0/8\n- cidr: 10.0.0.1/8\n", 2, 9, "not a valid network"),
        ("- cidr: 10.0.0.0/8\n  contry: DE\n", 2, 3, "unknown key 'contry'"),
        ("- country: DE\n", 1, 3, "no 'cidr'"),
        ("- cidr: 10.0.0.0/8\n  country: Germany\n", 2, 12, "two-letter"),
        ("- cidr: 10.0.0.0/8\n  asn: Google\n", 2, 8, "AS number"),
        ("- cidr: 10.0.0.0/8\n- cidr: 10.0.0.0/8\n", 2, 3, "already given on line 1"),
        ("cidr: 10.0.0.0/8\n", 1, 1, "YAML list"),
        ("- just a string\n", 1, 3, "mapping"),
        ("- cidr: [10.0.0.0/8\n", 2, 1, ""),
        ("- cidr: 10.0.0.0/8\n  cidr: 10.0.0.0/9\n", 2, 3, "twice"),
        ("- cidr: 10.0.0.0/8\n  operator: [a, b]\n", 2, 13, "single value"),
    ],
)
def test_bad_networks_file_points_at_line(
    tmp_path: Path, text: str, line: int, col: int, words: str
) -> None:
    path = write_file(tmp_path / "networks.yaml", text)
    with pytest.raises(GeoConfigError) as caught:
        load_networks(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}:{col}: "), message
    assert words in message
    assert "Traceback" not in message


def test_missing_networks_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(GeoConfigError, match=re.escape(str(path))):
        load_networks(path)


# --------------------------------------------------------------------------
# geoip_dir
# --------------------------------------------------------------------------


def test_geoip_dir_city_database_is_used(tmp_path: Path) -> None:
    write_city_db(tmp_path / "GeoLite2-City.mmdb", "8.8.8.0/24", "Testville", "FR")
    with GeoResolver(geoip_dir=tmp_path) as geo:
        info = geo.lookup("8.8.8.8")
        assert (info.country, info.city) == ("FR", "Testville")
        assert info.asn == 15169  # no ASN file in the folder: embedded ASN data
        elsewhere = geo.lookup("9.9.9.9")
        assert (elsewhere.scope, elsewhere.country, elsewhere.city) == ("public", None, None)
        assert geo.lookup("2001:4860:4860::8888").scope == "public"  # v6 in a v4-only db
        kinds = {str(db["path"]): db["database_type"] for db in geo.databases()}
        assert kinds[str(tmp_path / "GeoLite2-City.mmdb")] == "GeoLite2-City"
        assert sorted(kinds.values()) == ["GeoLite2-ASN", "GeoLite2-City"]


def test_geoip_dir_prefers_city_over_country(tmp_path: Path) -> None:
    write_city_db(tmp_path / "GeoLite2-City.mmdb", "8.8.8.0/24", "Cityville", "FR")
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["8.8.8.0/24"]), {"country": {"iso_code": "JP"}})
    writer.to_db_file(str(tmp_path / "GeoLite2-Country.mmdb"))
    with GeoResolver(geoip_dir=tmp_path) as geo:
        info = geo.lookup("8.8.8.8")
        assert (info.country, info.city) == ("FR", "Cityville")


def test_geoip_dir_missing_is_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(GeoConfigError, match=re.escape(str(missing))):
        GeoResolver(geoip_dir=missing)


def test_geoip_dir_without_usable_files_is_config_error(tmp_path: Path) -> None:
    write_file(tmp_path / "GeoLite2-City.mmdb", "not a database")
    with pytest.raises(GeoConfigError, match=re.escape(f"{tmp_path}: no usable")):
        GeoResolver(geoip_dir=tmp_path)


# --------------------------------------------------------------------------
# build script, offline on tiny source packages
# --------------------------------------------------------------------------


def make_source_packages(src: Path) -> None:
    """Tiny stand-ins for the two npm packages, unpacked."""
    country = src / "country" / "package"
    country.mkdir(parents=True)
    write_file(
        country / "package.json",
        json.dumps({"name": build.COUNTRY_PACKAGE, "version": "2.3.2024010203"}),
    )
    write_file(country / "NRO_LICENSE", "attribution to nro.net")
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="country ipvAll")
    writer.insert_network(IPSet(["52.74.0.0/15"]), {"country_code": "SG"})
    writer.insert_network(IPSet(["2a00:1450::/32"]), {"country_code": "IE"})
    writer.to_db_file(str(country / "geo-whois-asn-country.mmdb"))
    asn = src / "asn" / "package"
    asn.mkdir(parents=True)
    write_file(
        asn / "package.json", json.dumps({"name": build.ASN_PACKAGE, "version": "2.3.2024010203"})
    )
    write_file(
        asn / "asn-ipv4.csv",
        (
            '52.74.0.0,52.79.255.255,16509,"Amazon.com, Inc."\n'
            "52.79.0.0,52.80.0.255,64500,Overlapping Example\n"
        ),
    )
    write_file(
        asn / "asn-ipv6.csv",
        ("2a00:1450::,2a00:1450:ffff:ffff:ffff:ffff:ffff:ffff,15169,Google LLC\n"),
    )


def test_build_from_dir_writes_readable_databases(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_source_packages(src)
    assert build.main(["--out", str(out), "--from-dir", str(src), "--skip-check"]) == 0
    with geoip2.database.Reader(str(out / build.COUNTRY_FILE)) as reader:
        assert reader.country("52.75.1.1").country.iso_code == "SG"
        assert reader.country("2a00:1450::1").country.iso_code == "IE"
    with geoip2.database.Reader(str(out / build.ASN_FILE)) as reader:
        assert reader.asn("52.78.0.1").autonomous_system_organization == "Amazon.com, Inc."
        assert reader.asn("52.80.0.1").autonomous_system_number == 64500
        assert reader.asn("2a00:1450::1").autonomous_system_number == 15169
        assert reader.metadata().build_epoch == 1704164400  # 2024-01-02T03:00Z from version
    sources = json.loads((out / build.SOURCES_FILE).read_text(encoding="utf-8"))
    asn_entry = sources["files"][build.ASN_FILE]
    assert asn_entry["overlapping_rows_clipped"] == 1
    assert asn_entry["source_build_date"] == "2024-01-02T03:00:00Z"
    assert sources["files"][build.COUNTRY_FILE]["networks"] == 2
    assert sources["country_names"] is None


def test_build_from_dir_without_packages_fails_cleanly(tmp_path: Path) -> None:
    assert build.main(["--out", str(tmp_path / "out"), "--from-dir", str(tmp_path)]) == 1
