"""``leakmap device pull`` against a fake adb that answers like real phones of several Android versions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from leakmap.core.device import load_device

from conftest import BIN

FAKE_ADB = Path(__file__).parent / "fake_adb"
IMEI, IMSI, ICCID = "865312345678901", "404451234567890", "8991101200003204514"


def parcel(text: str) -> str:
    """A string as ``service call iphonesubinfo N`` prints it: UTF-16 words in hex, text on the right."""
    chars = [0, len(text), *map(ord, text), 0]
    words = [f"{(chars[i + 1] if i + 1 < len(chars) else 0) << 16 | chars[i]:08x}"
             for i in range(0, len(chars), 2)]
    lines = []
    for start in range(0, len(words), 4):
        chunk = words[start:start + 4]
        shown = "".join((chr(c) if 32 <= c < 127 else ".") + "." for c in chars[start * 2:start * 2 + 8])
        lines.append(f"  0x{start * 4:08x}: {' '.join(chunk):<35} '{shown}'")
    return "Result: Parcel(\n" + "\n".join(lines) + ")"


CONTACTS = ("Row: 0 display_name=Ravi, data1=098111 22233\n"
            "Row: 1 display_name=Meera, data1=+91 99887 76655")
COMMON = {"settings get secure android_id": "9774d56d682e549c",
          "content query --uri content://com.android.contacts/data/phones --projection display_name:data1":
              CONTACTS}
PHONES = {
    "kitkat": {"props": {"ro.build.version.sdk": "19", "ro.build.version.release": "4.4.4",
                         "ro.product.manufacturer": "Xiaomi", "ro.product.model": "HM 1SW",
                         "gsm.operator.alpha": "Airtel", "gsm.sim.operator.iso-country": "in"},
               "shell": {**COMMON, "dumpsys iphonesubinfo": f"Phone Subscriber Info:\n  Phone Type = GSM\n"
                                                           f"  Device ID = {IMEI}",
                         "service call iphonesubinfo 7": parcel(IMSI),
                         "service call iphonesubinfo 11": parcel(ICCID),
                         "service call iphonesubinfo 15": parcel("+919812345678"),
                         "cat /sys/class/net/wlan0/address": "64:09:80:12:34:56"}},
    "pie": {"props": {"ro.build.version.sdk": "28", "ro.build.version.release": "9",
                      "ro.product.manufacturer": "Xiaomi", "ro.product.model": "Redmi Note 7",
                      "gsm.operator.alpha": "Jio 4G,", "gsm.sim.operator.iso-country": "in,"},
            "shell": {**COMMON, "service call iphonesubinfo 1": parcel(IMEI),
                      "service call iphonesubinfo 7": parcel(IMSI),
                      "service call iphonesubinfo 11": parcel(ICCID),
                      "service call iphonesubinfo 15": "Result: Parcel(00000000 00000000   '........')",
                      "cat /sys/class/net/wlan0/address": "64:09:80:ab:cd:ef"}},
    "tiramisu": {"props": {"ro.build.version.sdk": "33", "ro.build.version.release": "13",
                           "ro.product.manufacturer": "Google", "ro.product.model": "Pixel 7",
                           "gsm.operator.alpha": "Vodafone IN"},
                 "shell": {**COMMON,
                           "cat /sys/class/net/wlan0/address": {"stderr": "cat: /sys/class/net/wlan0/"
                                                                "address: Permission denied", "code": 1}}},
    "locked": {"state": "unauthorized"},
}


def _pull(tmp_path: Path, phones: dict, *args: str) -> subprocess.CompletedProcess[str]:
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps(phones))
    env = {**os.environ, "PATH": f"{FAKE_ADB}:{os.environ['PATH']}", "FAKE_ADB_DEVICES": str(devices)}
    return subprocess.run([str(BIN / "leakmap"), "device", "pull", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize("serial", ["kitkat", "pie"])
def test_older_androids_give_their_identifiers(tmp_path: Path, serial: str) -> None:
    out = tmp_path / "device.yaml"
    result = _pull(tmp_path, PHONES, "--serial", serial, "--contacts", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    profile = load_device(out)
    assert (profile.values["imei"], profile.values["imsi"], profile.values["iccid"]) == (IMEI, IMSI, ICCID)
    assert profile.values["android_id"] == "9774d56d682e549c"
    assert profile.region == "IN" and profile.contact_numbers
    if serial == "kitkat":
        assert profile.values["phone_number"] == "+919812345678"
        assert profile.values["carrier"] == "Airtel" and profile.label == "Xiaomi HM 1SW"
    else:  # an empty line number: a note, not a value
        assert "phone_number" not in profile.values and "phone_number: not readable" in out.read_text()
        assert profile.values["carrier"] == "Jio 4G"


def test_android_10_and_later_say_what_to_fill_in_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "pixel.yaml"
    result = _pull(tmp_path, PHONES, "--serial", "tiramisu", "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "# imei: Android 13 does not give it to adb" in text and "*#06#" in text
    assert "# mac_address: not readable over adb" in text
    profile = load_device(out)
    assert "imei" not in profile.values and profile.values["android_id"] == "9774d56d682e549c"
    assert "note: imei: Android 13" in result.stderr


def test_a_phone_that_refuses_and_several_phones(tmp_path: Path) -> None:
    locked = _pull(tmp_path, {"locked": PHONES["locked"]}, "-o", str(tmp_path / "x.yaml"))
    assert locked.returncode == 1 and "has not authorised this computer" in locked.stderr
    several = _pull(tmp_path, PHONES, "-o", str(tmp_path / "x.yaml"))
    assert several.returncode == 1 and "choose one with --serial" in several.stderr
    assert "Traceback" not in locked.stderr + several.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_without_adb_it_says_how_to_write_the_file(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}  # no adb anywhere
    result = subprocess.run([str(BIN / "leakmap"), "device", "pull", "-o", str(tmp_path / "d.yaml")],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 1 and "adb not found" in result.stderr
    assert 'imei: "865312345678901"' in result.stderr and "docs/device-profile.md" in result.stderr
