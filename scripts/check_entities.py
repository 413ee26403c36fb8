"""Check geodb/entities.yaml against its format, the bundled Public Suffix List and the ASN database.

Usage::

    .venv/bin/python scripts/check_entities.py [geodb/entities.yaml] [--mmdb geodb/data/leakmap-asn.mmdb]

What it does:

1. Structure, as leakmap itself reads the file (``leakmap.geodb.entities.load_entity_file``: keys,
   types, countries, AS numbers, domains that are public suffixes), plus what the loader allows
   but the shipped file must not have: a domain or an ASN under two entities, a ``parent`` that
   is not in the file.
2. (merged into 1: the loader checks domains with the same offline tldextract leakmap uses.)
3. ASNs: prints, per entity, the organisation the ASN database gives for each listed ASN (or
   MISSING), then the database's ASNs whose organisation matches the entity's keywords but which
   the file does not list, so a human can decide whether to add them.

Exit status 1 when step 1 or 2 finds a problem; step 3 is a report for a human and never fails.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import maxminddb

from leakmap.core.yamlsource import ConfigError
from leakmap.geodb.entities import load_entity_file

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = ROOT / "geodb" / "entities.yaml"
DEFAULT_MMDB = ROOT / "geodb" / "data" / "leakmap-asn.mmdb"


# Organisation-name patterns (case-insensitive regexes) used to find ASNs the file may be missing.
# An entity without an entry here is searched for by its own name.
KEYWORDS: dict[str, list[str]] = {
    "Xiaomi": [r"\bxiaomi\b"],
    "Huawei": [r"huawei"],
    "Honor": [r"\bhonor device", r"hihonor"],
    "Oppo": [r"\boppo\b", r"heytap"],
    "Vivo": [r"\bvivo mobile", r"\bvivo communication"],
    "OnePlus": [r"oneplus"],
    "Realme": [r"\brealme\b"],
    "Tencent": [r"tencent"],
    "Sogou": [r"sogou"],
    "Alibaba": [r"alibaba (cloud|\(us\)|advertising)", r"aliyun", r"taobao"],
    "Ant Group": [r"\bant group", r"alipay", r"ant financial"],
    "Baidu": [r"baidu"],
    "iQIYI": [r"iqiyi"],
    "ByteDance": [r"bytedance", r"tiktok", r"byteplus", r"volcano engine", r"douyin"],
    "Kingsoft Cloud": [r"kingsoft"],
    "China Mobile": [r"china mobile", r"tietong"],
    "China Unicom": [r"china unicom", r"china169", r"^unicom \w+ province"],
    "China Telecom": [r"chinanet", r"china telecom", r"chinatelecom"],
    "Google": [r"\bgoogle\b"],
    "Apple": [r"^apple (inc|distribution)"],
    "Meta": [r"facebook", r"meta platforms", r"whatsapp", r"instagram"],
    "Amazon": [r"^amazon(\.com| (technologies|data services|connection))"],
    "Microsoft": [r"microsoft", r"skype"],
    "LinkedIn": [r"linkedin"],
    "Cloudflare": [r"cloudflare"],
    "Akamai": [r"akamai", r"linode"],
    "Samsung": [r"samsung(?! ?sds)(?!.*data systems)"],
    "Samsung SDS": [r"samsung ?sds", r"samsung data systems"],
    "Reliance Jio": [r"reliance jio", r"jio platforms"],
    "Bharti Airtel": [r"bharti", r"^airtel digital"],
    "Vodafone Idea": [r"vodafone idea", r"idea cellular"],
    "BSNL": [r"bharat sanchar", r"\bbsnl\b"],
    "Tata Communications": [r"tata communications"],
    "Flipkart": [r"flipkart"],
    "Paytm": [r"paytm", r"one97"],
    "InMobi": [r"inmobi\b"],
    "Glance": [r"\bglance"],
    "AppsFlyer": [r"appsflyer"],
    "Adjust": [r"^adjust"],
    "Unity": [r"unity technologies", r"unity software"],
    "AppLovin": [r"applovin"],
    "Yandex": [r"yandex(?!\.cloud)"],
    "Yandex Cloud": [r"yandex\.cloud"],
    "VK": [r"\bllc vk\b", r"vkontakte", r"mail\.ru"],
}


def check_file(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Problems (the loader's error, shared names) and the entries as leakmap reads them."""
    try:
        loaded = load_entity_file(path)
    except ConfigError as err:
        return [str(err)], []
    problems: list[str] = []
    owners: dict[object, str] = {}
    names = {entry["name"] for entry in loaded.entries}
    for entry in loaded.entries:
        listed = [*entry["domains"], *entry["customer_domains"], *(f"AS{a}" for a in entry["asns"])]
        for item in listed:
            if item in owners:
                problems.append(f"{entry['name']}: {item} also listed under {owners[item]}")
            owners[item] = entry["name"]
        if not listed:
            problems.append(f"{entry['name']}: lists neither domains nor asns")
        if entry.get("parent") and entry["parent"] not in names:
            problems.append(f"{entry['name']}: parent {entry['parent']!r} is not an entity in the file")
    return problems, loaded.entries


def asn_organisations(mmdb: Path) -> dict[int, str]:
    """AS number -> organisation name, over every network in the database."""
    orgs: dict[int, str] = {}
    with maxminddb.open_database(str(mmdb)) as reader:
        for _network, record in reader:
            if not isinstance(record, dict):
                continue
            asn = record.get("autonomous_system_number")
            if isinstance(asn, int) and asn not in orgs:
                orgs[asn] = str(record.get("autonomous_system_organization") or "")
    return orgs


def report_asns(entities: list[dict[str, Any]], orgs: dict[int, str]) -> int:
    """Print listed ASNs with their organisation and unlisted candidates; return the MISSING count."""
    listed = {asn for entity in entities for asn in entity.get("asns") or [] if isinstance(asn, int)}
    missing = 0
    by_entity: dict[str, list[int]] = defaultdict(list)
    for entity in entities:
        name = str(entity.get("name"))
        asns = [a for a in entity.get("asns") or [] if isinstance(a, int)]
        patterns = KEYWORDS.get(name, [re.escape(name.lower())])
        regexes = [re.compile(p, re.IGNORECASE) for p in patterns]
        for candidate, org_name in orgs.items():
            if candidate not in listed and any(r.search(org_name) for r in regexes):
                by_entity[name].append(candidate)
        if not asns and not by_entity[name]:
            continue
        print(f"\n== {name} ({entity.get('country')}, hosting={bool(entity.get('hosting'))})")
        for asn in asns:
            org = orgs.get(asn)
            if org is None:
                missing += 1
            print(f"   AS{asn:<7} {org if org is not None else 'MISSING'}")
        for asn in sorted(by_entity[name]):
            print(f"   not listed: AS{asn:<7} {orgs[asn]}")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--mmdb", type=Path, default=DEFAULT_MMDB, help="ASN database (GeoLite2-ASN layout)")
    parser.add_argument("--no-asn", action="store_true", help="skip the ASN report (step 3)")
    args = parser.parse_args(argv)

    problems, entities = check_file(args.file)

    missing = 0
    if not args.no_asn:
        missing = report_asns(entities, asn_organisations(args.mmdb))

    n_domains = sum(len(e.get("domains") or []) for e in entities)
    n_asns = sum(len(e.get("asns") or []) for e in entities)
    print(f"\n{args.file}: {len(entities)} entities, {n_domains} domains, {n_asns} ASNs", end="")
    print(f", {missing} ASNs not in the database" if not args.no_asn else "")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("structure and domains OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
