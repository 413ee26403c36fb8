"""Operator attribution, watch rules and the entity file: the pure core of "Destinations".

Real databases throughout: the embedded ones, and MaxMind's own test
databases (tests/data/maxmind, see its README) for city-level answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakmap.core.destination import Locator, WatchRule
from leakmap.core.exchange import Exchange
from leakmap.core.yamlsource import ConfigError, load
from leakmap.geodb.entities import (
    EntityIndex,
    build_index,
    load_entity_file,
    parse_entities,
    registrable_domain,
)
from leakmap.geodb.lookup import GeoResolver, NetworkOverride
from leakmap.policies.model import load_policy

MAXMIND = Path(__file__).parent / "data" / "maxmind"
CHINA = WatchRule(countries=frozenset({"CN"}), operator_countries=frozenset({"CN"}))


@pytest.fixture(scope="module")
def embedded() -> Iterator[GeoResolver]:
    with GeoResolver() as geo:
        yield geo


@pytest.fixture(scope="module")
def maxmind() -> Iterator[GeoResolver]:
    with GeoResolver(geoip_dir=MAXMIND) as geo:
        yield geo


@pytest.fixture(scope="module")
def shipped() -> EntityIndex:
    return build_index()


def flow(host: str | None, ip: str | None, kind: str = "http", **extra: object) -> Exchange:
    return Exchange(flow_id="f", kind=kind, timestamp=0.0, host=host, server_ip=ip, **extra)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# the cases the issue names


def test_chinese_vendor_on_aws_singapore(embedded: GeoResolver, shipped: EntityIndex) -> None:
    place = Locator(embedded, shipped, CHINA).locate(flow("api.account.xiaomi.com", "13.228.0.1"))
    assert (place.country, place.asn) == ("SG", 16509)
    assert "amazon" in (place.as_org or "").lower()
    assert (place.operator, place.operator_country, place.attribution) == ("Xiaomi", "CN", "domain")
    assert place.domain == "xiaomi.com"
    assert place.watched and place.watch_reason == "operator_country=CN"


def test_chinese_vendor_in_singapore_with_maxmind_files(maxmind: GeoResolver,
                                                       shipped: EntityIndex) -> None:
    # 214.0.0.0/24 is Singapore in MaxMind's GeoIP2-City-Test database
    place = Locator(maxmind, shipped, CHINA).locate(flow("api.account.xiaomi.com", "214.0.0.1"))
    assert (place.country, place.city) == ("SG", "Singapore")
    assert (place.operator, place.operator_country, place.watch_reason) == (
        "Xiaomi", "CN", "operator_country=CN")


def test_chinese_vendor_on_a_chinese_address(maxmind: GeoResolver, shipped: EntityIndex) -> None:
    # 175.16.199.0/24 is Changchun, CN in MaxMind's GeoIP2-City-Test database
    place = Locator(maxmind, shipped, CHINA).locate(flow("data.mistat.xiaomi.com", "175.16.199.3"))
    assert (place.country, place.city) == ("CN", "Changchun")
    assert (place.operator, place.operator_country) == ("Xiaomi", "CN")
    assert place.watch_reason == "server_country=CN, operator_country=CN"


def test_us_company_on_a_us_address(maxmind: GeoResolver, shipped: EntityIndex) -> None:
    # 216.160.83.56 is Milton, US in MaxMind's GeoIP2-City-Test database
    place = Locator(maxmind, shipped, CHINA).locate(flow("www.google.com", "216.160.83.56"))
    assert (place.country, place.city) == ("US", "Milton")
    assert (place.operator, place.operator_country, place.attribution) == ("Google", "US", "domain")
    assert not place.watched and place.watch_reason is None


def test_private_address_is_labelled_not_an_error(embedded: GeoResolver, shipped: EntityIndex) -> None:
    place = Locator(embedded, shipped, CHINA).locate(flow("api.account.xiaomi.com", "192.168.1.20"))
    assert (place.geo_scope, place.country, place.asn) == ("private", None, None)
    assert place.operator == "Xiaomi"  # the host still says whose service it is
    for address, scope in (("100.64.1.1", "private"), ("169.254.3.3", "private"),
                           ("127.0.0.1", "loopback"), ("fe80::1", "private")):
        assert Locator(embedded, shipped, CHINA).locate(flow(None, address)).geo_scope == scope


def test_address_missing_from_the_database(maxmind: GeoResolver, shipped: EntityIndex) -> None:
    # MaxMind's test City database holds only a few networks; 9.9.9.9 is not among them
    place = Locator(maxmind, shipped, CHINA).locate(flow("unlisted-example.org", "9.9.9.9"))
    assert (place.geo_scope, place.country, place.city) == ("public", None, None)
    assert (place.operator, place.attribution, place.watched) == (None, None, False)


# --------------------------------------------------------------------------
# clouds and CDNs never become the operator by guess


def test_host_spellings(embedded: GeoResolver, shipped: EntityIndex) -> None:
    locator = Locator(embedded, shipped, CHINA)
    for host in ("api.xiaomi.com:443", "API.Xiaomi.COM.", " api.xiaomi.com "):
        assert locator.locate(flow(host, "13.228.0.1")).operator == "Xiaomi", host
    assert locator.locate(flow("api\u3002xiaomi\u3002com", "13.228.0.1")).operator == "Xiaomi"
    for junk in ("x" * 100_000, "[::1]:443", "..", "a b.com", "ex\x00ample.com", "\ud800.com",
                 "evil.example/x.xiaomi.com"):
        place = locator.locate(flow(junk, "13.228.0.1"))
        assert place.operator is None and place.country == "SG", junk


def test_unlisted_domain_on_a_cloud_has_no_operator(embedded: GeoResolver,
                                                    shipped: EntityIndex) -> None:
    place = Locator(embedded, shipped, CHINA).locate(flow("api.unlisted-shop.example", "13.228.0.1"))
    assert place.asn == 16509 and place.operator is None and place.attribution is None


def test_customer_subdomain_of_a_cloud_suffix_is_not_the_cloud(embedded: GeoResolver,
                                                               shipped: EntityIndex) -> None:
    for host in ("d1234abcd.cloudfront.net", "xiaomi-logs.s3.amazonaws.com", "foo.appspot.com",
                 "xiaomi-logs.oss-cn-beijing.aliyuncs.com", "dynamodb.ap-southeast-1.amazonaws.com",
                 "proj-123.firebaseio.com"):
        place = Locator(embedded, shipped, CHINA).locate(flow(host, "13.228.0.1"))
        assert place.operator is None, host
        assert place.domain == registrable_domain(host)


def test_asn_names_the_operator_only_for_companies_that_host_themselves(
        embedded: GeoResolver, shipped: EntityIndex) -> None:
    hosting = [e for e in shipped.entities.values() if e.hosting and e.asns]
    own = [e for e in shipped.entities.values() if not e.hosting and e.asns]
    assert hosting and own
    assert shipped.by_asn(16509) is not None and shipped.by_asn(16509).hosting  # type: ignore[union-attr]
    owner = own[0]
    operator = shipped.by_asn(owner.asns[0])
    assert operator is not None and operator.name == owner.name and not operator.hosting


def test_asn_attribution_through_the_locator(tmp_path: Path, embedded: GeoResolver) -> None:
    # 8.8.8.8 is AS15169 in the embedded database; an entity that hosts only itself there
    index = index_from(tmp_path, """
        - {name: Own, country: FR, asns: [15169]}
    """)
    place = Locator(embedded, index, CHINA).locate(flow(None, "8.8.8.8"))
    assert (place.operator, place.operator_country, place.attribution) == ("Own", "FR", "asn")
    hosting = index_from(tmp_path, "- {name: Cloud, country: FR, asns: [15169], hosting: true}\n")
    assert Locator(embedded, hosting, CHINA).locate(flow(None, "8.8.8.8")).operator is None


# --------------------------------------------------------------------------
# network overrides and policy additions


def test_network_override_names_the_operator(shipped: EntityIndex) -> None:
    lab = NetworkOverride(cidr=__import__("ipaddress").ip_network("127.0.0.0/8"), country="CN",
                          operator="Lab vendor", operator_country="CN", source="network")
    with GeoResolver(networks=[lab]) as geo:
        place = Locator(geo, shipped, CHINA).locate(flow("api.account.xiaomi.com", "127.0.0.1"))
    assert (place.geo_scope, place.country) == ("loopback", "CN")
    assert (place.operator, place.attribution) == ("Lab vendor", "network")
    assert place.watch_reason == "server_country=CN, operator_country=CN"


def test_policy_entities_and_networks(tmp_path: Path) -> None:
    policy_file = tmp_path / "lab.yaml"
    policy_file.write_text("""
extends: default.yaml
entities:
  - {name: Acme Analytics, country: RU, domains: [acme-metrics.example]}
  - {name: Xiaomi, domains: [xiaomi-lab.example]}
networks:
  - {cidr: 10.9.0.0/16, country: IN, operator: Lab Telco, operator_country: IN}
""", encoding="utf-8")
    policy = load_policy(policy_file)
    from leakmap.wiring import build_locator

    resolver, index, locator = build_locator(policy)
    with resolver:
        acme = locator.locate(flow("t.acme-metrics.example", "8.8.8.8"))
        assert (acme.operator, acme.operator_country, acme.attribution) == ("Acme Analytics", "RU",
                                                                            "policy")
        added = locator.locate(flow("api.xiaomi-lab.example", "8.8.8.8"))
        assert (added.operator, added.attribution) == ("Xiaomi", "policy")
        shipped_domain = locator.locate(flow("api.account.xiaomi.com", "8.8.8.8"))
        assert (shipped_domain.operator, shipped_domain.attribution) == ("Xiaomi", "domain")
        lab = locator.locate(flow(None, "10.9.1.1"))
        assert (lab.country, lab.operator, lab.operator_country, lab.attribution) == (
            "IN", "Lab Telco", "IN", "policy")
    assert "xiaomi.com" in index.entities["Xiaomi"].domains  # merged, not replaced


@pytest.mark.parametrize(("entry", "spot", "message"), [
    ("{name: Newco, domains: [newco.example]}", "3:5", "has no 'country'"),
    ("{name: X, country: CN, asns: ['\u00b2']}", "3:35", "not an AS number"),
    ("{name: X, country: CN, domains: ['https://x.com/']}", "3:38", "no scheme, port, path"),
    ("{name: X, country: CN, domains: ['\u5c0f\u7c73.com']}", "3:38", "xn--"),
])
def test_policy_entity_errors(tmp_path: Path, entry: str, spot: str, message: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: default.yaml\nentities:\n  - {entry}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:{spot}:") + ".*" + re.escape(message)):
        load_policy(bad)


def test_policy_changing_a_shipped_country_is_attributed_to_the_policy(tmp_path: Path,
                                                                        embedded: GeoResolver) -> None:
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text("extends: default.yaml\nentities:\n  - {name: Xiaomi, country: HK}\n",
                           encoding="utf-8")
    index = build_index(load_policy(policy_file).entities)
    place = Locator(embedded, index, CHINA).locate(flow("api.account.xiaomi.com", "13.228.0.1"))
    assert (place.operator, place.operator_country, place.attribution) == ("Xiaomi", "HK", "policy")


def test_policy_entity_mistake_points_at_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: default.yaml\nentities:\n  - name: X\n    countri: CN\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:4:5: unknown key 'countri' "
                                                    "(did you mean 'country'?)")):
        load_policy(bad)
    bad.write_text("extends: default.yaml\nentities:\n  - {name: X, domains: [co.uk]}\n",
                   encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:3:25:") + ".*public suffix"):
        load_policy(bad)
    bad.write_text("extends: default.yaml\nnetworks:\n  - {cidr: 10.0.0.0/33}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:3:12:") + ".*cidr"):
        load_policy(bad)


# --------------------------------------------------------------------------
# watch rules


def test_watch_lists_and_allow_lists() -> None:
    assert CHINA.reasons("public", "SG", "CN") == ["operator_country=CN"]
    assert CHINA.reasons("public", None, None) == []
    local = WatchRule.from_policy({"allow": {"countries": ["IN"], "operator_countries": ["in"]}})
    assert local.reasons("public", "IN", "IN") == []
    assert local.reasons("public", "SG", "IN") == ["server_country=SG (not in allow list)"]
    assert local.reasons("public", None, None) == ["server_country=unknown (not in allow list)"]
    assert local.reasons("private", None, "CN") == ["operator_country=CN (not in allow list)"]


def test_allow_list_counts_a_lab_override_country() -> None:
    local = WatchRule(allow_countries=frozenset({"IN"}))
    assert local.reasons("private", "CN", None) == ["server_country=CN (not in allow list)"]
    assert local.reasons("private", None, None) == []
    assert CHINA.reasons("loopback", "CN", None) == ["server_country=CN"]


def test_watch_country_codes_as_written(tmp_path: Path) -> None:
    policy_file = tmp_path / "no.yaml"
    policy_file.write_text("extends: default.yaml\nwatch: {countries: [NO, cn], "
                           "allow: {countries: [NO]}}\n", encoding="utf-8")
    rule = WatchRule.from_policy(load_policy(policy_file).watch)
    assert rule.countries == {"NO", "CN"} and rule.allow_countries == {"NO"}


def test_default_policy_watches_china_both_ways() -> None:
    rule = WatchRule.from_policy(load_policy().watch)
    assert rule.countries == {"CN"} and rule.operator_countries == {"CN"}


def test_bad_watch_country_points_at_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: default.yaml\nwatch: {countries: [CN, China]}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}:2:") + ".*'China' is not a country code"):
        load_policy(bad)


# --------------------------------------------------------------------------
# addresses the capture resolved; never a live lookup


def test_dns_answers_locate_later_flows_without_a_server_address(embedded: GeoResolver,
                                                                 shipped: EntityIndex) -> None:
    locator = Locator(embedded, shipped, CHINA)
    before = locator.locate(flow("api.account.xiaomi.com", None))
    assert (before.geo_ip, before.geo_scope, before.country) == (None, "unknown", None)
    answer = locator.locate(flow(None, "10.0.0.53", kind="dns", dns_question="api.account.xiaomi.com",
                                 dns_answers=["13.228.0.1"]))
    assert (answer.geo_ip, answer.geo_ip_source, answer.country) == ("13.228.0.1", "dns", "SG")
    after = locator.locate(flow("API.Account.Xiaomi.com", None))
    assert (after.geo_ip, after.geo_ip_source, after.country) == ("13.228.0.1", "dns", "SG")
    direct = locator.locate(flow("api.account.xiaomi.com", "8.8.8.8"))
    assert (direct.geo_ip, direct.geo_ip_source) == ("8.8.8.8", "server")


# --------------------------------------------------------------------------
# the shipped entity file


REQUIRED = {
    "Xiaomi": "xiaomi.com", "Huawei": "huawei.com", "Oppo": "oppo.com", "Vivo": "vivo.com",
    "OnePlus": "oneplus.com", "Realme": "realme.com", "Tencent": "qq.com",
    "Alibaba": "aliyun.com", "Baidu": "baidu.com", "ByteDance": "bytedance.com",
    "China Mobile": "10086.cn", "China Unicom": "chinaunicom.cn", "China Telecom": "189.cn",
    "Google": "google.com", "Apple": "apple.com", "Meta": "facebook.com", "Amazon": "amazon.com",
    "Microsoft": "microsoft.com", "Cloudflare": "cloudflare.com", "Akamai": "akamai.com",
}


def test_shipped_entities_cover_the_named_companies(shipped: EntityIndex) -> None:
    for name, domain in REQUIRED.items():
        found = shipped.by_host(f"api.{domain}")
        assert found is not None, f"{domain} is not listed"
        assert found[0].name == name, (domain, found[0].name)
        assert shipped.entities[name].asns or name in ("Xiaomi", "Oppo", "Vivo", "OnePlus",
                                                        "Realme"), f"{name} has no ASN"
    for cloud in ("Amazon", "Cloudflare", "Akamai", "Alibaba", "Tencent", "Google", "Microsoft"):
        assert shipped.entities[cloud].hosting, cloud
    for country, names in {"CN": ("Xiaomi", "Huawei", "Tencent", "ByteDance", "China Mobile"),
                           "US": ("Google", "Apple", "Amazon")}.items():
        for name in names:
            assert shipped.entities[name].country == country, name


def test_shipped_entity_domains_are_registrable_and_unique() -> None:
    shipped = load_entity_file()
    assert re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", shipped.version)
    owners: dict[str, str] = {}
    for entry in shipped.entries:
        for domain in entry["domains"]:
            assert registrable_domain(domain) == domain, domain
            assert domain not in owners, f"{domain} under {owners.get(domain)} and {entry['name']}"
            owners[domain] = entry["name"]


def test_registrable_domain_is_offline_and_private_suffix_aware() -> None:
    assert registrable_domain("api.account.xiaomi.com") == "xiaomi.com"
    assert registrable_domain("www.baidu.com.cn") == "baidu.com.cn"
    assert registrable_domain("bucket.s3.amazonaws.com") == "bucket.s3.amazonaws.com"
    assert registrable_domain("co.uk") is None
    assert registrable_domain("203.0.113.9") is None


# --------------------------------------------------------------------------


def index_from(tmp_path: Path, entries: str) -> EntityIndex:
    path = tmp_path / "entities.yaml"
    path.write_text("entities:\n" + "\n".join("  " + line.strip() for line in entries.splitlines()
                                               if line.strip()) + "\n", encoding="utf-8")
    source = load(path, "entities")
    return EntityIndex(parse_entities(source, ("entities",), source.data["entities"]))
