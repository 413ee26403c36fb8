"""The HTML evidence report, opened in a real browser (Debian's chromium) with the network off."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakmap.policies.model import default_policy_path

from conftest import SAMPLES, leakmap_cli

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
INJECTED = "<script>window.pwned = 1; document.title = 'pwned'</script>"
OPERATOR = "<img src=x onerror=\"window.pwned = 2\">Evil Ops"
IMEI = "865312345678901"


def _browser() -> Iterator:  # type: ignore[type-arg]
    if not (CHROMIUM and CHROMEDRIVER):
        reason = ("Chromium not installed: apt-get install --no-install-recommends chromium "
                  "chromium-driver (.ci/run installs them)")
        if os.environ.get("LEAKMAP_REQUIRE_CHROMIUM"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--proxy-server=http://127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # the network off: every request the page might make fails
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0})
    try:
        yield driver
    finally:
        driver.quit()


browser = pytest.fixture(_browser)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An analysed capture with hostile text in a field name and an operator name; made once
    for this module's tests, which only read it."""
    tmp_path = tmp_path_factory.mktemp("report")
    har = json.loads((SAMPLES / "redmi-2014.har").read_text())
    entry = json.loads(json.dumps(har["log"]["entries"][0]))
    entry["request"]["url"] = "https://evil.example/collect"
    entry["serverIPAddress"] = "10.66.0.1"
    entry["request"]["postData"] = {"mimeType": "application/json",
                                    "text": json.dumps({INJECTED: IMEI})}
    har["log"]["entries"].append(entry)
    capture = tmp_path / "hostile.har"
    capture.write_text(json.dumps(har))
    networks = tmp_path / "networks.yaml"
    networks.write_text(f"- {{cidr: 10.66.0.0/16, country: RU, asn: 64666, as_org: Net, "
                        f"operator: {json.dumps(OPERATOR)}, operator_country: RU}}\n")
    db = f"sqlite:///{tmp_path / 'r.db'}"
    leakmap_cli("analyze", str(capture), "--device", str(SAMPLES / "redmi-1s.yaml"), "--db", db,
                "--policy", str(default_policy_path().parent / "strict-defence.yaml"),
                "--networks", str(networks), "--run-name", "evidence")
    out = tmp_path / "report.html"
    leakmap_cli("report", "--db", db, "--run", "evidence", "--format", "html", "-o", str(out))
    rows = json.loads(leakmap_cli("report", "--db", db, "--run", "evidence", "--format", "json").stdout)
    return out, rows


def test_the_file_needs_nothing_from_outside(report: tuple[Path, dict]) -> None:
    text = report[0].read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "@import" not in text and "url(" not in text
    assert INJECTED not in text and "&lt;script&gt;window.pwned" in text  # escaped as text
    assert "default-src 'none'" in text  # and a CSP that would stop it anyway


def test_the_report_in_chromium_offline(browser, report: tuple[Path, dict]) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    path, rows = report
    browser.get(path.as_uri())
    assert browser.title == "leakmap evidence report: evidence"  # the injected script did not run
    assert browser.execute_script("return window.pwned") is None
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    summary = browser.find_element(By.ID, "summary").text
    assert "WATCHED" in summary and "api.account.xiaomi.com" in summary and "Xiaomi (CN)" in summary
    assert summary.index("api.account.xiaomi.com") < summary.index("evil.example")  # watched first
    assert "Evil Ops" in summary and "onerror" in summary  # the operator's name, shown as text
    evidence = browser.find_elements(By.CSS_SELECTOR, "#evidence-table tbody tr")
    assert len(evidence) == len(rows["findings"])
    assert any(INJECTED in row.text for row in evidence)
    countries = {flow["country"] or "??" for flow in rows["flows"]}
    marks = browser.find_elements(By.CSS_SELECTOR, "#country-chart .mark.country")
    assert sorted(m.get_attribute("data-country") for m in marks) == sorted(countries)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#types-chart .mark.cell")) >= 5
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline .mark.dot")


def test_the_evidence_table_filters_and_sorts_in_the_page(browser, report: tuple[Path, dict]) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    path, rows = report
    browser.get(path.as_uri())
    browser.find_element(By.ID, "filter").send_keys("imei")
    visible = [r for r in browser.find_elements(By.CSS_SELECTOR, "#evidence-table tbody tr")
               if r.is_displayed()]
    assert len(visible) == sum(1 for f in rows["findings"] if "imei" in json.dumps(f).lower()) > 0
    assert browser.find_element(By.ID, "shown").text == str(len(visible))
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "watched-only").click()
    browser.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
    watched = [r for r in browser.find_elements(By.CSS_SELECTOR, "#evidence-table tbody tr")
               if r.is_displayed()]
    assert len(watched) == sum(1 for f in rows["findings"] if f["watched"])
    header = browser.find_elements(By.CSS_SELECTOR, "#evidence-table thead th")[7]  # data type
    header.click()
    types = [r.find_elements(By.TAG_NAME, "td")[7].get_attribute("textContent")
             for r in browser.find_elements(By.CSS_SELECTOR, "#evidence-table tbody tr")]
    assert types == sorted(types) and len(set(types)) > 1
    header.click()
    again = [r.find_elements(By.TAG_NAME, "td")[7].get_attribute("textContent")
             for r in browser.find_elements(By.CSS_SELECTOR, "#evidence-table tbody tr")]
    assert again == list(reversed(types))


def test_a_long_evidence_table_is_paged(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    entries = [{"startedDateTime": "2014-08-04T09:15:02.000Z",
                "request": {"method": "POST", "url": f"https://api.account.xiaomi.com/r{index}",
                            "headers": [], "postData": {"mimeType": "application/json",
                                                        "text": json.dumps({"imei": IMEI, "n": index})}},
                "response": {"status": 200}, "serverIPAddress": "123.125.114.144"}
               for index in range(450)]
    capture = tmp_path / "long.har"
    capture.write_text(json.dumps({"log": {"version": "1.2", "entries": entries}}))
    db = f"sqlite:///{tmp_path / 'long.db'}"
    leakmap_cli("analyze", str(capture), "--device", str(SAMPLES / "redmi-1s.yaml"), "--db", db)
    out = tmp_path / "long.html"
    leakmap_cli("report", "--db", db, "--format", "html", "-o", str(out))
    browser.get(out.as_uri())

    def visible() -> list[str]:  # in one round trip: 450 rows asked one by one took 10 s
        return browser.execute_script(  # type: ignore[no-any-return]
            "return [...document.querySelectorAll('#evidence-table tbody tr')]"
            ".filter(row => row.getClientRects().length > 0)"
            ".map(row => row.querySelectorAll('td')[1].innerText)")

    assert len(visible()) == 200 and browser.find_element(By.ID, "page").text == "rows 1–200"
    browser.find_element(By.ID, "next").click()
    browser.find_element(By.ID, "next").click()
    assert len(visible()) == 50 and browser.find_element(By.ID, "page").text == "rows 401–450"
    browser.find_element(By.ID, "next").click()  # past the end: stays
    assert browser.find_element(By.ID, "page").text == "rows 401–450"
    browser.find_element(By.ID, "filter").send_keys("nothing-like-this")
    assert visible() == [] and browser.find_element(By.ID, "shown").text == "0"
