"""Destinations live: a real proxy, vendor host names on a local TLS server, the real database.

The lab places loopback on AWS Singapore with ``--networks`` (no operator),
so the operator must come from the host name the phone asked for, and the
watch flag from the operator's country.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx

from conftest import leakmap_cli

IMEI = "865312345678901"  # samples/redmi-1s.yaml


def test_live_flows_carry_server_operator_and_watch(start_proxy, tls_server, tmp_path: Path,
                                                    device_file: Path) -> None:
    networks = tmp_path / "aws-sg.yaml"
    networks.write_text("- {cidr: 127.0.0.0/8, country: SG, asn: 16509, as_org: 'Amazon.com, Inc.'}\n")
    db = f"sqlite:///{tmp_path / 'live.db'}"
    proxy = start_proxy("--device", str(device_file), "--db", db, "--run-name", "dest",
                        "--networks", str(networks), "--flush-ms", "200", "--geodb-max-age", "1")
    context = ssl.create_default_context(cafile=str(proxy.ca))
    base = f"https://localhost:{tls_server.port}"
    with httpx.Client(proxy=proxy.url, verify=context, timeout=20) as client:
        sent = client.post(f"{base}/pass/v2/register", json={"imei": IMEI},
                           headers={"Host": "api.account.xiaomi.com"})
        assert sent.status_code == 200
        assert client.get(f"{base}/generate_204", headers={"Host": "www.google.com"}).status_code == 200
    assert proxy.stop() == 0, proxy.output

    report = json.loads(leakmap_cli("report", "--db", db, "--format", "json").stdout)
    flows = {f["host"]: f for f in report["flows"]}
    xiaomi, google = flows["api.account.xiaomi.com"], flows["www.google.com"]
    assert (xiaomi["country"], xiaomi["asn"], xiaomi["geo_ip"], xiaomi["geo_ip_source"]) == (
        "SG", 16509, "127.0.0.1", "server")
    assert (xiaomi["operator"], xiaomi["operator_country"], xiaomi["attribution"]) == (
        "Xiaomi", "CN", "domain")
    assert (xiaomi["watched"], xiaomi["watch_reason"]) == (True, "operator_country=CN")
    assert (google["operator"], google["operator_country"], google["watched"]) == ("Google", "US", False)
    imei = [f for f in report["findings"] if f["data_type"] == "imei"]
    assert imei and all(f["watched"] and f["operator"] == "Xiaomi" for f in imei)

    watched = json.loads(leakmap_cli("report", "--db", db, "--watched", "--format", "json").stdout)
    assert [f["host"] for f in watched["flows"]] == ["api.account.xiaomi.com"]
    assert {f["host"] for f in watched["findings"]} == {"api.account.xiaomi.com"}
    # mitmdump said so while the phone was in hand
    assert "operated by Xiaomi (CN) [watched: operator_country=CN]" in proxy.output
    assert "leakmap-country.mmdb was built" in proxy.output and "older than 1 day" in proxy.output
