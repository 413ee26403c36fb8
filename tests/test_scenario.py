"""A scenario walked through live: steps advanced from another terminal, findings tied to steps."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx

from leakmap.core.scenario import load_scenario

from conftest import SAMPLES, leakmap_cli

IMEI = "865312345678901"


def test_steps_advanced_from_another_terminal_tie_each_finding_to_its_step(
        start_proxy, tls_server, tmp_path: Path, networks_file: Path) -> None:
    device = tmp_path / "phone.yaml"
    device.write_text((SAMPLES / "redmi-1s.yaml").read_text())
    scenario = tmp_path / "mini.yaml"
    scenario.write_text("name: mini\ndevice: phone.yaml\npolicy: default.yaml\nsteps:\n"
                        "  - {name: boot, say: Switch the phone on.}\n"
                        "  - {name: contact, say: Add a contact., expect: its number sent}\n"
                        "  - {name: sms, say: Send an SMS.}\n")
    db = f"sqlite:///{tmp_path / 's.db'}"
    proxy = start_proxy("--scenario", str(scenario), "--db", db, "--run-name", "walk",
                        "--networks", str(networks_file))
    proxy.wait_for_output("step 1/3: boot")
    context = ssl.create_default_context(cafile=str(proxy.ca))
    with httpx.Client(proxy=proxy.url, verify=context, timeout=20) as client:
        def send(path: str, body: dict) -> None:
            assert client.post(f"https://127.0.0.1:{tls_server.port}/{path}", json=body).status_code == 200

        send("boot", {"imei": IMEI})
        moved = leakmap_cli("step", "next", "--db", db)  # the newest running run with steps
        assert moved.stdout.strip() == "run walk; ended step 1 boot; started step 2 contact"
        proxy.wait_for_output("step 2/3: contact")
        assert "(expect: its number sent)" in proxy.output
        send("contact", {"tel": "+91 99887 76655"})
        leakmap_cli("step", "next", "--db", db, "--run", "walk")
        proxy.wait_for_output("step 3/3: sms")
        send("sms", {"imei": IMEI, "text": "hello"})
        last = leakmap_cli("step", "next", "--db", db, "--run", "walk").stdout
        assert "no step left: the scenario is complete" in last
        proxy.wait_for_output("scenario mini complete")
    assert proxy.stop() == 0, proxy.output
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "walk", "--format", "json").stdout)
    steps = {f["url"].rsplit("/", 1)[-1]: f["step"] for f in report["flows"]}
    assert steps == {"boot": "1 boot", "contact": "2 contact", "sms": "3 sms"}
    assert {f["step"] for f in report["findings"]} == {"1 boot", "2 contact", "3 sms"}
    shown = leakmap_cli("step", "show", "--db", db, "--run", "walk").stdout
    assert shown.count(" .. ") == 3 and "now" not in shown  # every step ended, the last with the run
    page = tmp_path / "walk.html"
    leakmap_cli("report", "--db", db, "--run", "walk", "--format", "html", "-o", str(page))
    assert '<section id="steps">' in page.read_text() and "step 2 contact" in page.read_text()
    leakmap_cli("reanalyze", "walk", "--db", db, "--run-name", "walk-again")
    again = json.loads(leakmap_cli("report", "--db", db, "--run", "walk-again", "--format", "json").stdout)
    assert {f["step"] for f in again["findings"]} == {"1 boot", "2 contact", "3 sms"}


def test_the_shipped_scenario_and_a_broken_one(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "scenarios" / "fsecure-redmi-2014.yaml"
    scenario = load_scenario(shipped)
    assert [s.name for s in scenario.steps][:4] == ["boot", "network", "contact", "sms"]
    assert scenario.policy.endswith("strict-defence.yaml") and scenario.device.endswith("redmi-1s.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nsteps:\n  - {name: boot, sya: Switch it on.}\n")
    result = leakmap_cli("run", "--scenario", str(broken), "--listen-port", "0", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{broken.resolve()}:3:18: unknown key 'sya' (did you mean 'say'?)" in result.stderr
