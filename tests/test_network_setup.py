"""The phone's way into the proxy, tested as a phone uses it, in namespaces the test makes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import leakmap_cli
from netns import phone_namespace
from servers import TLSServer, free_port

IMEI = "865312345678901"


def _tables() -> str:
    if not shutil.which("nft"):  # no nftables here: no table either
        return ""
    return subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout


def test_setup_transparent_prints_by_default(tmp_path: Path) -> None:
    printed = leakmap_cli("setup", "transparent", "--interface", "wlan0", "--port", "8081").stdout
    assert "sysctl -w net.ipv4.ip_forward=1" in printed
    assert 'iifname "wlan0" tcp dport { 80, 443 } redirect to :8081' in printed
    assert 'iifname "wlan0" udp dport 443 reject' in printed  # QUIC falls back to TCP
    assert "table inet leakmap_wlan0" not in _tables()  # printing changes nothing
    bad = leakmap_cli("setup", "transparent", "--interface", "wlan0; rm -rf /", check=False)
    assert bad.returncode == 2 and "is not an interface name" in bad.stderr
    ports = leakmap_cli("setup", "transparent", "--interface", "wlan0", "--ports", "80,443x", check=False)
    assert ports.returncode == 2 and "is not a list of TCP ports" in ports.stderr
    dotted = leakmap_cli("setup", "transparent", "--interface", "wlan.0").stdout
    assert "table inet leakmap_wlan_2e0" in dotted  # not wlan_0's table


def test_undo_restores_only_the_sysctls_it_set(tmp_path: Path, leakmap_home: Path) -> None:
    state = leakmap_home / "setup" / "transparent-leakmap_wlan9.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"net.ipv4.ip_forward": "0", "kernel.core_pattern": "|/tmp/x",
                                 "net.ipv6.conf.all.forwarding": "1; reboot"}))
    printed = leakmap_cli("setup", "transparent", "--interface", "wlan9", "--undo").stdout
    assert "sysctl -w net.ipv4.ip_forward=0" in printed
    assert "core_pattern" not in printed and "reboot" not in printed


def test_a_phone_behind_transparent_mode(start_proxy, tmp_path: Path, device_file: Path) -> None:
    if not (shutil.which("nft") and shutil.which("curl")):
        pytest.skip("nftables or curl not installed (apt-get install --no-install-recommends "
                    "nftables curl; .ci/run installs them)")
    with phone_namespace(1) as phone, TLSServer(tmp_path, host=phone.host_ip) as server:
        port = free_port()
        applied = leakmap_cli("setup", "transparent", "--interface", phone.host_side, "--port", str(port),
                              "--ports", str(server.port), "--apply", check=False)
        try:
            assert applied.returncode == 0, applied.stderr
            assert f"table inet leakmap_{phone.host_side}" in _tables()
            db = f"sqlite:///{tmp_path / 't.db'}"
            proxy = start_proxy("--mode", "transparent", "--device", str(device_file), "--db", db,
                                "--run-name", "hotspot", listen_port=port)
            url = f"https://{phone.host_ip}:{server.port}/pass/register"
            sent = phone.run("curl", "-sS", "--cacert", str(proxy.ca), "-d", json.dumps({"imei": IMEI}),
                             "-H", "content-type: application/json", url)
            assert sent.returncode == 0 and '"ok": true' in sent.stdout, sent.stderr
            assert proxy.stop() == 0, proxy.output
        finally:
            undone = leakmap_cli("setup", "transparent", "--interface", phone.host_side, "--undo",
                                 "--apply", check=False)
        assert undone.returncode == 0, undone.stderr
        assert f"leakmap_{phone.host_side}" not in _tables()
    assert [path for _, path, _ in server.received] == ["/pass/register"]
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "hotspot", "--format", "json").stdout)
    [flow] = report["flows"]
    assert flow["server_ip"] == phone.host_ip and flow["client_ip"] == phone.phone_ip
    assert {(f["field"], f["data_type"]) for f in report["findings"]} >= {("request.body.json.imei", "imei")}


def test_a_phone_through_wireguard_mode(start_proxy, tmp_path: Path, device_file: Path) -> None:
    if not (shutil.which("wireguard-go") and shutil.which("wg") and shutil.which("curl")):
        pytest.skip("wireguard-go and wireguard-tools not installed (apt-get install "
                    "--no-install-recommends wireguard-go wireguard-tools; .ci/run installs them)")
    with phone_namespace(2) as phone:
        server_ip = phone.host_ip[:-1] + "3"  # a second address of the router, reached by the tunnel
        subprocess.run(["ip", "addr", "add", f"{server_ip}/32", "dev", phone.host_side], check=True)
        wg_port = free_port()
        confdir = tmp_path / f"mitm-{wg_port}"  # where start_proxy puts mitmproxy's confdir
        conf = leakmap_cli("setup", "wireguard", "--confdir", str(confdir), "--endpoint", phone.host_ip,
                           "--port", str(wg_port), "--no-qr").stdout
        assert f"Endpoint = {phone.host_ip}:{wg_port}" in conf and "PrivateKey = " in conf
        tunnel = tmp_path / "wg.conf"  # what `wg setconf` takes: no Address or DNS
        tunnel.write_text("\n".join(line for line in conf.splitlines()
                                    if not line.startswith(("Address", "DNS"))) + "\n")
        device = f"lmwg{phone.namespace[-4:]}"
        client = subprocess.Popen(["ip", "netns", "exec", phone.namespace, "wireguard-go", "-f", device],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_link(phone, device)
            for command in (["wg", "setconf", device, str(tunnel)],
                            ["ip", "addr", "add", "10.0.0.1/32", "dev", device],
                            ["ip", "link", "set", device, "up"],
                            ["ip", "route", "add", f"{server_ip}/32", "dev", device]):
                done = phone.run(*command)
                assert done.returncode == 0, (command, done.stderr)
            with TLSServer(tmp_path, host=server_ip) as server:
                db = f"sqlite:///{tmp_path / 'wg.db'}"
                proxy = start_proxy("--mode", f"wireguard@{wg_port}", "--device", str(device_file),
                                    "--db", db, "--run-name", "tunnel", wait_port=False,
                                    listen_port=wg_port)
                url = f"https://{server_ip}:{server.port}/pass/register"
                sent = phone.run("curl", "-sS", "--max-time", "20", "--cacert", str(proxy.ca), "-d",
                                 json.dumps({"imei": IMEI}), "-H", "content-type: application/json", url)
                assert sent.returncode == 0 and '"ok": true' in sent.stdout, (sent.stderr, proxy.output)
                assert proxy.stop() == 0, proxy.output
        finally:
            client.terminate()
            client.wait(10)
    assert [path for _, path, _ in server.received] == ["/pass/register"]
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "tunnel", "--format", "json").stdout)
    [flow] = [f for f in report["flows"] if f["kind"] == "http"]
    assert flow["server_ip"] == server_ip
    assert ("request.body.json.imei", "imei") in {(f["field"], f["data_type"]) for f in report["findings"]}


def _wait_for_link(phone, device: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while phone.run("ip", "link", "show", device).returncode != 0:
        assert time.monotonic() < deadline, f"wireguard-go made no {device}"
        time.sleep(0.1)


def test_a_missing_tool_is_named_in_one_line_not_a_traceback() -> None:
    import click
    import pytest

    from leakmap.cli.setup import _has_table, _run

    with pytest.raises(click.ClickException, match="leakmap-no-such-tool not found"):
        _run(["leakmap-no-such-tool", "-f", "-"], "table inet x {}")
    if not shutil.which("nft"):  # what --apply meets on a machine without nftables
        with pytest.raises(click.ClickException, match="install nftables"):
            _run(["nft", "-f", "-"], "table inet x {}")
        assert _has_table("wlan0") is False
