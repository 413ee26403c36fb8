"""The policies shipped beside the default: each loads, says what it claims, and finds its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leakmap.core.classify import Classifier
from leakmap.core.device import load_device
from leakmap.core.exchange import Exchange
from leakmap.core.validators import verhoeff_valid
from leakmap.policies.model import Policy, default_policy_path, load_policy

POLICIES = Path(__file__).parent.parent / "policies"
SHIPPED = ["strict-defence.yaml", "india-localisation.yaml", "gdpr-transfer.yaml", "example-custom.yaml"]
MODELINE = "# yaml-language-server: $schema=policy.schema.json"

ADVISORY_TYPES = ("imei", "imsi", "iccid", "phone_number", "android_id", "advertising_id",
                  "mac_address", "contact", "sms")
EU = ["AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
      "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"]
EEA = ["IS", "LI", "NO"]
ADEQUATE = ["AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "GB", "UY", "US"]


def with_check_digit(body: str) -> str:
    """``body`` and the one digit that makes it Verhoeff-valid."""
    return next(body + d for d in "0123456789" if verhoeff_valid(body + d))


AADHAAR = with_check_digit("23412341234")
NOT_AADHAAR = AADHAAR[:-1] + str((int(AADHAAR[-1]) + 1) % 10)  # the check digit off by one


def shipped(name: str) -> Policy:
    return load_policy(POLICIES / name)


def test_the_test_numbers_are_what_they_claim() -> None:
    assert AADHAAR == "234123412346" and verhoeff_valid(AADHAAR)
    assert len(NOT_AADHAAR) == 12 and not verhoeff_valid(NOT_AADHAAR)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_loads_and_extends_the_default(name: str) -> None:
    policy = shipped(name)
    assert policy.name == name.removesuffix(".yaml")
    assert set(load_policy().data_types) <= set(policy.data_types)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_names_its_schema_and_explains_itself(name: str) -> None:
    lines = (POLICIES / name).read_text("utf-8").splitlines()
    assert lines[0] == MODELINE
    header = [line for line in lines[1:] if line.startswith("#")]
    assert any("Sources" in line for line in header)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_policy_is_installed_with_the_package(name: str) -> None:
    """``extends: default.yaml`` and ``--policy NAME`` from anywhere need the installed copy."""
    installed = default_policy_path().parent / name
    assert installed.read_bytes() == (POLICIES / name).read_bytes()


def test_strict_defence_blocks_the_advisory_identifiers_and_alerts_on_the_rest() -> None:
    policy = shipped("strict-defence.yaml")
    assert policy.watch == {"countries": ["CN", "HK", "MO"], "operator_countries": ["CN"]}
    block, alert = policy.actions
    assert (block.action, block.watched, block.data_types) == ("block", True, ADVISORY_TYPES)
    assert (alert.action, alert.watched, alert.data_types, alert.categories) == ("alert", True, None, None)


def test_india_localisation_watches_everything_outside_india() -> None:
    policy = shipped("india-localisation.yaml")
    assert policy.watch == {"allow": {"countries": ["IN"], "operator_countries": ["IN"]}}
    assert [(rule.action, rule.watched, rule.data_types) for rule in policy.actions] == [
        ("alert", True, None)]


def test_gdpr_transfer_allows_the_eea_and_adequacy_countries() -> None:
    policy = shipped("gdpr-transfer.yaml")
    allowed = policy.watch["allow"]
    assert len(EU) == 27
    assert sorted(allowed["countries"]) == sorted(EU + EEA + ADEQUATE)
    assert allowed["operator_countries"] == allowed["countries"]
    assert [(rule.action, rule.watched) for rule in policy.actions] == [("alert", True)]


# -- example-custom's data types find their values ------------------------------------


@pytest.fixture(scope="module")
def custom() -> Classifier:
    """example-custom without a device profile: only shapes and key names."""
    return Classifier(shipped("example-custom.yaml"), load_device(None))


def posting(body: object) -> Exchange:
    return Exchange(flow_id="f", kind="http", timestamp=0.0, url="https://api.example.in/v1/kyc",
                    method="POST", request_headers=[("Content-Type", "application/json")],
                    request_body=json.dumps(body).encode())


def found(classifier: Classifier, body: object) -> set[tuple[str, str, str]]:
    """(data type, match kind, value) of each finding in a JSON request with ``body``."""
    return {(f.data_type, f.match, f.value) for f in classifier.classify(posting(body)).findings}


def test_aadhaar_found_by_its_shape_in_a_json_body(custom: Classifier) -> None:
    assert ("aadhaar", "pattern", AADHAAR) in found(custom, {"note": f"KYC done for {AADHAAR} today"})


@pytest.mark.parametrize("key", ["aadhaar", "aadhaar_no", "aadhaarNumber", "uid", "UID_NO"])
def test_aadhaar_found_under_its_key_names(custom: Classifier, key: str) -> None:
    # the shape finds it too, and one finding per field is kept (pattern > key): so the
    # key rule is checked on its own as well
    assert ("aadhaar", "pattern", AADHAAR) in found(custom, {key: AADHAAR})
    keys = shipped("example-custom.yaml").data_types["aadhaar"].keys
    assert keys is not None and keys.matches(key)


@pytest.mark.parametrize("body", [
    {"note": f"KYC done for {NOT_AADHAAR} today"},
    {"aadhaar_no": NOT_AADHAAR},
    {"uid": NOT_AADHAAR},
    {"order": "9" + AADHAAR},            # inside a longer number
    {"amount": "0." + AADHAAR},          # the digits after a decimal point
    {"aadhaar": with_check_digit("13412341234")},  # Verhoeff-valid, but Aadhaar numbers
    {"aadhaar": with_check_digit("03412341234")},  # do not start with 0 or 1
])
def test_aadhaar_not_found_where_it_is_not_one(custom: Classifier, body: dict[str, str]) -> None:
    assert not {f for f in found(custom, body) if f[0] == "aadhaar"}


def test_wifi_ssid_and_vendor_account_found_under_their_keys(custom: Classifier) -> None:
    findings = found(custom, {"wifiSsid": "HomeNet-5G", "xiaomi_id": "1234567890"})
    assert ("wifi_ssid", "key", "HomeNet-5G") in findings
    assert ("mi_account", "key", "1234567890") in findings


def test_vendor_account_needs_a_numeric_id(custom: Classifier) -> None:
    assert not {f for f in found(custom, {"user_id": "alice"}) if f[0] == "mi_account"}
