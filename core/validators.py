"""Validators a policy can name: functions from a candidate string to bool.

A detector's regex finds a shape; its validator decides whether the shape is
really that kind of value (a Luhn check for an IMEI, a real numbering plan
for a phone number).  Every validator takes the matched text and the device's
region (for national phone numbers) and never raises.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from functools import lru_cache

import phonenumbers

Validator = Callable[[str, str | None], bool]


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _luhn(value: str, region: str | None = None) -> bool:
    return luhn_valid(value)


# Mobile country codes in use (ITU-T E.212), used to tell an IMSI's shape.
_MCC_RANGES = ((202, 209), (212, 299), (302, 376), (400, 489), (502, 553), (602, 659),
               (702, 750))


def _imsi(value: str, region: str | None = None) -> bool:
    if not (value.isdigit() and 14 <= len(value) <= 15):
        return False
    mcc = int(value[:3])
    return any(low <= mcc <= high for low, high in _MCC_RANGES) and len(set(value)) > 2


def _iccid(value: str, region: str | None = None) -> bool:
    digits = value.rstrip("Ff")
    return digits.isdigit() and 18 <= len(digits) <= 20 and digits.startswith("89") and (
        luhn_valid(digits) or len(digits) == 20
    )


@lru_cache(maxsize=8192)
def parse_phone(value: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    """A valid phone number in ``value``, reading national forms in ``region``.

    Remembered (a parse takes about 100 us, and a phone's numbers come back
    flow after flow): the number returned is shared, so it is only read.
    """
    text = value.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+") and region is None:
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


def _phone(value: str, region: str | None = None) -> bool:
    return parse_phone(value, region) is not None


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}")


def _email(value: str, region: str | None = None) -> bool:
    return bool(_EMAIL.fullmatch(value)) and ".." not in value


_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}")


def _mac(value: str, region: str | None = None) -> bool:
    if not _MAC.fullmatch(value):
        return False
    digits = re.sub(r"[:-]", "", value).lower()
    return digits not in ("000000000000", "ffffffffffff") and digits != "020000000000"


def _uuid(value: str, region: str | None = None) -> bool:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.int != 0


def _latlon(value: str, region: str | None = None) -> bool:
    numbers = re.findall(r"-?\d{1,3}\.\d{2,}", value)
    if len(numbers) < 2:
        return False
    lat, lon = float(numbers[0]), float(numbers[1])
    return -90 <= lat <= 90 and -180 <= lon <= 180


def _nonempty(value: str, region: str | None = None) -> bool:
    return bool(value.strip())


VALIDATORS: dict[str, Validator] = {
    "luhn": _luhn,
    "imsi": _imsi,
    "iccid": _iccid,
    "phone": _phone,
    "email": _email,
    "mac": _mac,
    "uuid": _uuid,
    "latlon": _latlon,
    "nonempty": _nonempty,
}
