"""``leakmap device pull``: a device profile read from the phone over adb.

What PiRogue's and nogotofail's guides have testers do by hand.  Each value
is read the way the phone's Android version allows; where it does not (the
IMEI, IMSI, ICCID and phone number are closed to adb from Android 10 on),
the profile gets a comment saying so and how to fill it in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import click
import yaml

from leakmap.cli.main import cli, fail_cleanly
from leakmap.cli.private import write_private

_TIMEOUT_S = 20
# ITelephony/IPhoneSubInfo transaction codes that answer over `service call` on Android 5-9
# (SDK 21-28): getDeviceId, getSubscriberId, getIccSerialNumber, getLine1Number
_SUBINFO_CODES = {"imei": 1, "imsi": 7, "iccid": 11, "phone_number": 15}
_CLOSED_FROM_SDK = 29  # Android 10: READ_PRIVILEGED_PHONE_STATE, which adb's shell lacks
_MANUAL = """Without adb, write the profile by hand (docs/device-profile.md), e.g. device.yaml:

  name: Redmi 1S
  imei: "865312345678901"        # dial *#06#
  phone_number: "+91 98123 45678"
  carrier: Airtel
  contacts: [{name: Ravi, phone: "098111 22233"}]

adb comes with Android's platform-tools (Debian: apt install adb)."""


class AdbError(click.ClickException):
    pass


@dataclass
class Adb:
    """One phone over adb: ``shell`` runs a command there and returns its output."""

    executable: str
    serial: str

    def shell(self, *command: str) -> str:
        try:
            done = subprocess.run([self.executable, "-s", self.serial, "shell", *command],
                                  capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise AdbError(f"adb did not answer within {_TIMEOUT_S} s ({' '.join(command)})") from e
        return done.stdout.strip() if done.returncode == 0 else ""

    def prop(self, name: str) -> str:
        return self.shell("getprop", name)


@dataclass
class Pulled:
    values: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def find_adb(given: str | None) -> str:
    adb = given or shutil.which("adb")
    if not adb or not (Path(adb).is_file() and os.access(adb, os.X_OK)):
        raise click.ClickException(f"adb not found{' at ' + given if given else ' on PATH'}.\n{_MANUAL}")
    return adb


def choose_device(adb: str, serial: str | None) -> str:
    """The serial to read: the one given, or the only device attached."""
    try:
        listed = subprocess.run([adb, "devices"], capture_output=True, text=True, timeout=_TIMEOUT_S,
                                check=False).stdout
    except subprocess.TimeoutExpired as e:
        raise AdbError(f"adb devices did not answer within {_TIMEOUT_S} s") from e
    states = dict(line.split(None, 1) for line in listed.splitlines()
                  if len(line.split()) >= 2 and not line.startswith(("*", "List of devices")))
    states = {name: state.strip() for name, state in states.items()}
    if serial is not None and serial not in states:
        raise AdbError(f"no device {serial!r} attached (adb sees: {', '.join(states) or 'none'})")
    if serial is None:
        if not states:
            raise AdbError("no device attached: connect the phone by USB with USB debugging on "
                           "(Settings > Developer options)")
        if len(states) > 1:
            raise AdbError(f"{len(states)} devices attached ({', '.join(states)}): choose one with --serial")
        serial = next(iter(states))
    state = states[serial]
    if state == "unauthorized":
        raise AdbError(f"device {serial} has not authorised this computer: unlock it and accept the "
                       "'Allow USB debugging?' prompt, then try again")
    if state != "device":
        raise AdbError(f"device {serial} is {state!r}, not ready (expected 'device')")
    return serial


def parcel_text(output: str) -> str:
    """The string in a ``service call`` reply: ``Result: Parcel(... '8.6.5.3.' ...)``."""
    if "Parcel" not in output or "Exception" in output:
        return ""
    text = "".join(re.findall(r"'([^']*)'", output)).replace(".", "")
    return text.strip()


def _subinfo(adb: Adb, code: int) -> str:
    return parcel_text(adb.shell("service", "call", "iphonesubinfo", str(code)))


def _dumpsys_device_id(adb: Adb) -> str:
    match = re.search(r"Device ID\s*=\s*(\w+)", adb.shell("dumpsys", "iphonesubinfo"))
    return match.group(1) if match else ""


def pull(adb: Adb, contacts: bool) -> Pulled:
    found = Pulled()
    sdk_text = adb.prop("ro.build.version.sdk")
    sdk = int(sdk_text) if sdk_text.isdigit() else 0
    release = adb.prop("ro.build.version.release")
    maker, model = adb.prop("ro.product.manufacturer"), adb.prop("ro.product.model")
    found.values.update(name=" ".join(v for v in (maker, model) if v) or None, model=model or None,
                        android_version=release or None)
    found.values["carrier"] = (adb.prop("gsm.operator.alpha") or adb.prop("gsm.sim.operator.alpha")
                               ).split(",")[0] or None
    country = adb.prop("gsm.sim.operator.iso-country").split(",")[0].upper()
    found.values["region"] = country or None
    _telephony(adb, sdk, release, found)
    found.values["android_id"] = _hex_id(adb.shell("settings", "get", "secure", "android_id"))
    if sdk >= 26:
        found.notes.append("android_id: from Android 8 on, each app sees its own Android ID; this is "
                           "the one adb's shell sees, not the app's")
    _wifi_mac(adb, sdk, found)
    if contacts:
        found.values["contacts"] = _contacts(adb, found)
    return found


def _telephony(adb: Adb, sdk: int, release: str, found: Pulled) -> None:
    if sdk >= _CLOSED_FROM_SDK:
        for name in _SUBINFO_CODES:
            found.notes.append(f"{name}: Android {release or sdk} does not give it to adb (it needs "
                               f"READ_PRIVILEGED_PHONE_STATE); {_HOW[name]}")
        return
    readers: dict[str, Callable[[], str]] = {
        name: partial(_subinfo, adb, code) for name, code in _SUBINFO_CODES.items()}
    if sdk < 21:  # Android 4.4 and older: dumpsys shows the device id
        readers["imei"] = partial(_dumpsys_device_id, adb)
    for name, read in readers.items():
        value = read()
        if _plausible(name, value):
            found.values[name] = value
        else:
            found.notes.append(f"{name}: not readable on this phone over adb; {_HOW[name]}")


_HOW = {"imei": "dial *#06# and write it in", "imsi": "read it from Settings > About phone > SIM "
        "status, or from a rooted phone", "iccid": "it is printed on the SIM card",
        "phone_number": "write in the SIM's number, as +CC and digits"}


def _plausible(name: str, value: str) -> bool:
    if name == "phone_number":
        return bool(re.fullmatch(r"\+?[0-9 ()-]{6,20}", value))
    return value.isdigit() and len(value) >= 14 and len(set(value)) > 1


def _hex_id(text: str) -> str | None:
    return text if re.fullmatch(r"[0-9a-fA-F]{8,32}", text) else None


def _wifi_mac(adb: Adb, sdk: int, found: Pulled) -> None:
    mac = adb.shell("cat", "/sys/class/net/wlan0/address")
    if re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", mac) and mac != "02:00:00:00:00:00":
        found.values["mac_address"] = mac
        if sdk >= 29:
            found.notes.append("mac_address: Android 10 and later use a random MAC per Wi-Fi network "
                               "unless that is turned off for the lab network")
    else:
        found.notes.append("mac_address: not readable over adb on this phone (Android 11 and later "
                           "close it); see Settings > About phone > Wi-Fi MAC address")


def _contacts(adb: Adb, found: Pulled) -> list[dict[str, str]]:
    output = adb.shell("content", "query", "--uri", "content://com.android.contacts/data/phones",
                       "--projection", "display_name:data1")
    rows = re.findall(r"display_name=(.*?), data1=(.*)", output)
    if not rows:
        found.notes.append("contacts: none read (no contacts, or the content provider refused)")
    return [{"name": name.strip(), "phone": phone.strip()} for name, phone in rows if phone.strip()]


def profile_text(found: Pulled, serial: str) -> str:
    stamp = datetime.now(tz=UTC).isoformat(timespec="seconds")
    header = [f"# Device profile pulled by leakmap device pull from {serial} on {stamp}.",
              "# It holds the phone's identifiers in clear: keep it like the capture.",
              *(f"# {note}" for note in found.notes)]
    values = {k: v for k, v in found.values.items() if v not in (None, "", [])}
    body = yaml.safe_dump(values, sort_keys=False, allow_unicode=True, default_style=None)
    return "\n".join(header) + "\n" + _quoted_numbers(body)


def _quoted_numbers(text: str) -> str:
    """Digit strings as strings: an IMEI must not be read back as a number."""
    return re.sub(r"^(\s*(?:- )?\w+: )(\d[\d ]*)$", r'\1"\2"', text, flags=re.MULTILINE)


@cli.group("device")
def device_group() -> None:
    """Device profiles: the known values of the phone under test."""


@device_group.command("pull")
@click.option("--serial", default=None, help="The phone's adb serial (needed when several are attached).")
@click.option("--contacts", is_flag=True, default=False, help="Also read the contacts' numbers.")
@click.option("--adb", "adb_path", default=None, help="The adb executable (default: adb on PATH).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the profile (YAML, mode 0600).")
@fail_cleanly
def pull_command(serial: str | None, contacts: bool, adb_path: str | None, output: Path) -> None:
    """Read a device profile from the phone over adb.

    Example: leakmap device pull --contacts -o device.yaml
    """
    from leakmap.core.device import load_device

    adb = find_adb(adb_path)
    chosen = choose_device(adb, serial)
    found = pull(Adb(adb, chosen), contacts)
    text = profile_text(found, chosen)
    write_private(output, text)
    profile = load_device(output)  # what was written must load as a profile
    known = [k for k in ("imei", "imsi", "iccid", "phone_number", "android_id", "mac_address", "carrier")
             if profile.values.get(k)]
    click.echo(f"wrote {output}: {', '.join(known) or 'no identifiers'}"
               f"{f', {len(profile.contact_numbers)} contacts' if contacts else ''}", err=True)
    for note in found.notes:
        click.echo(f"note: {note}", err=True)
