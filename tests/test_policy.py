"""Policy and device-profile files: the default, extends, and errors that point at the spot."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakmap.core.device import load_device
from leakmap.core.yamlsource import ConfigError
from leakmap.policies.model import load_policy

DEFAULT_TYPES = {"imei", "imsi", "iccid", "phone_number", "email", "android_id",
                 "advertising_id", "mac_address", "location", "carrier", "contact", "sms"}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_default_policy_names_every_data_type() -> None:
    policy = load_policy()
    assert set(policy.data_types) == DEFAULT_TYPES
    assert policy.data_types["imei"].pattern is not None
    assert policy.data_types["imei"].pattern.validator == "luhn"
    assert len(policy.sha256) == 64


def test_extends_overrides_by_name_and_adds_types(tmp_path: Path) -> None:
    default = Path(load_policy().path)
    child = write(tmp_path, "lab.yaml", f"""
extends: {default}
name: lab
data_types:
  carrier: {{category: network, severity: critical, known: {{fields: [carrier]}}}}
  aadhaar:
    category: custom
    severity: critical
    pattern: {{regex: '(?<![0-9])[2-9][0-9]{{11}}(?![0-9])'}}
""")
    policy = load_policy(child)
    assert policy.name == "lab"
    assert policy.data_types["carrier"].severity == "critical"
    assert "aadhaar" in policy.data_types and "imei" in policy.data_types
    assert policy.sha256 != load_policy().sha256


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data_types:\n  imei: {category: device_id, severity: hihg}\n",
         ":2:41: unknown severity 'hihg' (did you mean 'high'?)"),
        ("data_types:\n  x:\n    category: device_id\n    severity: low\n"
         "    pattern: {regex: '(unclosed', validator: luhn}\n",
         ":5:22: regex does not compile"),
        ("data_types:\n  x:\n    category: device_id\n    severity: low\n"
         "    pattern: {regex: '\\d+', validator: lun}\n",
         "unknown validator 'lun' (did you mean 'luhn'?)"),
        ("data_types:\n  x: {category: device, severity: low}\n",
         "unknown category 'device' (did you mean 'device_id'?)"),
        ("data_types:\n  x: {category: custom, severity: low, keys: {names: 3}}\n",
         "wrong type: a number (expected a list of strings)"),
        ("data_types:\n  x:\n    category: custom\n    severity: low\n  y: [\n",
         "YAML syntax error"),
        ("datatypes: {}\n", ":1:1: unknown key 'datatypes' (did you mean 'data_types'?)"),
    ],
)
def test_policy_errors_name_file_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "p.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message


def test_device_profile_reads_numbers_in_national_form(tmp_path: Path) -> None:
    path = write(tmp_path, "d.yaml", """
phone_number: "+91 98123 45678"
contacts: [{name: A, phone: "098111 22233"}, "+44 20 7946 0958"]
sms: ["hello there", {from: "+919876500011", body: "OTP 4411"}]
location: {lat: 28.6, lon: 77.2}
""")
    device = load_device(path)
    assert device.region == "IN"
    assert device.known("contacts") == ("098111 22233", "+44 20 7946 0958")
    assert device.known("sms.from") == ("+919876500011",)
    assert device.known("sms.body") == ("hello there", "OTP 4411")
    assert device.location == (28.6, 77.2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("imie: '1'\n", ":1:1: unknown key 'imie'"),
        ("imei: [1, 2]\n", ":1:7: wrong type: list (expected a string)"),
        ("region: XX\n", "unknown region 'XX'"),
        ("location: {lat: 95, lon: 0}\n", "location out of range"),
    ],
)
def test_device_profile_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, "d.yaml", text)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_device(path)


def test_extends_default_yaml_finds_the_shipped_policy_from_anywhere(tmp_path: Path) -> None:
    child = write(tmp_path, "mine.yaml", "extends: default.yaml\nname: mine\n"
                  "data_types:\n  sms: {category: message, severity: low}\n")
    policy = load_policy(child)
    assert policy.data_types["sms"].severity == "low"
    assert policy.data_types["imei"].severity == "high"


def test_unquoted_numbers_in_a_profile_are_read_as_written(tmp_path: Path) -> None:
    path = write(tmp_path, "d.yaml", "imei: 865312345678901\nphone_number: 0412345670\n"
                 "region: AU\ncontacts: [{name: A, phone: 0412345671}]\n")
    device = load_device(path)
    assert device.values["imei"] == "865312345678901"
    assert device.values["phone_number"] == "0412345670"  # not octal 69847992
    assert device.known("contacts") == ("0412345671",)


@pytest.mark.parametrize(("text", "expected"), [
    ("sms: [{sender: '+911', text: hi}]\n", ":1:8: unknown key 'sender'"),
    ("contacts: [{name: A, tel: '1'}]\n", ":1:22: unknown key 'tel'"),
    ("imei: '1'\nimei: '2'\n", ":2:1: 'imei' given twice"),
])
def test_profile_mistakes_that_used_to_pass_silently(tmp_path: Path, text: str,
                                                     expected: str) -> None:
    path = write(tmp_path, "d.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_device(path)
    assert expected in str(caught.value)


def test_a_data_type_defined_twice_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "data_types:\n  x: {category: custom, severity: low}\n"
                 "  x: {category: custom, severity: high}\n")
    with pytest.raises(ConfigError, match=":3:3: 'x' given twice"):
        load_policy(path)
