"""A device profile with 1,000 known values, for the headline benchmark.

The usual identifiers of ``samples/redmi-1s.yaml`` (IMEI, IMSI, ICCID, own
number, e-mail, Android ID, advertising ID, MAC address, carrier), two SMS
(a sender is a known ``contact``, a body a known ``sms``) and enough contacts
to make 1,000 known values.  Contacts are valid Indian mobile numbers written
the way people type them (national with the trunk 0, or ``+91`` grouped),
so every one is expanded into all its written forms and all its transforms
(plain, url, base64, hex, md5, sha1, sha256) by ``core/known.py``.  The
format is docs/device-profile.md.  The output is the same on every run.
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

KNOWN_VALUES = 1000
IDS = {
    "imei": "865312345678901",
    "imsi": "404451234567890",
    "iccid": "8991101200003204514",
    "phone_number": "+91 98123 45678",
    "carrier": "Airtel",
    "email": "test.unit3@example.com",
    "android_id": "9774d56d682e549c",
    "advertising_id": "38400000-8cf0-11bd-b23e-10b96e40000d",
    "mac_address": "a4:50:46:12:34:56",
}
SMS = [{"from": "+91 98765 00011", "body": "Your OTP is 4411"}]
CONTACTS = KNOWN_VALUES - len(IDS) - 2 * len(SMS)


def contact_numbers(count: int, seed: int = 1000) -> list[str]:
    """``count`` distinct Indian mobile numbers, alternately national and ``+91``-grouped."""
    rng = random.Random(seed)
    taken = {"9812345678", "9876500011"}
    numbers: list[str] = []
    while len(numbers) < count:
        digits = f"{rng.choice('6789')}{rng.randrange(10**9):09d}"
        if digits in taken:
            continue
        taken.add(digits)
        written = (f"0{digits[:5]} {digits[5:]}" if len(numbers) % 2 == 0
                   else f"+91 {digits[:5]} {digits[5:]}")
        numbers.append(written)
    return numbers


def profile(known_values: int = KNOWN_VALUES) -> dict[str, object]:
    """The profile as data: the ids, one SMS (2 values) and the rest as contacts."""
    contacts = known_values - (KNOWN_VALUES - CONTACTS)
    return {
        "name": f"benchmark phone ({known_values} known values)",
        "model": "HM 1SW",
        **IDS,
        "contacts": [{"name": f"Contact {i}", "phone": phone}
                     for i, phone in enumerate(contact_numbers(contacts))],
        "sms": SMS,
    }


def write_profile(path: Path, known_values: int = KNOWN_VALUES) -> Path:
    path.write_text(yaml.safe_dump(profile(known_values), sort_keys=False, allow_unicode=True))
    return path
