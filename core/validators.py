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
    # isdecimal, not isdigit: "²" is a digit that int() refuses, and validators never raise
    if not digits.isdecimal() or len(digits) < 2:
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
    if not (value.isdecimal() and 14 <= len(value) <= 15):
        return False
    mcc = int(value[:3])
    return any(low <= mcc <= high for low, high in _MCC_RANGES) and len(set(value)) > 2


def _iccid(value: str, region: str | None = None) -> bool:
    digits = value.rstrip("Ff")
    return digits.isdecimal() and 18 <= len(digits) <= 20 and digits.startswith("89") and (
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


# -- check-digit schemes for national ids and account numbers ---------------
# These take ASCII digits only: the numbers they check are printed that way,
# and str.isdigit() alone is true for "²", which int() refuses.


def _ascii_digits(value: str, minimum: int = 2) -> bool:
    return value.isascii() and value.isdigit() and len(value) >= minimum


def _dihedral5(a: int, b: int) -> int:
    """The product in the dihedral group D5: 0-4 are rotations, 5-9 reflections.

    Verhoeff's scheme is built on this group; computing the product keeps the
    10x10 table out of the source, where a mistyped entry would hide.
    """
    if a < 5:
        return (a + b) % 5 + (5 if b >= 5 else 0)
    return (a - b) % 5 + (0 if b >= 5 else 5)


_D5 = tuple(tuple(_dihedral5(a, b) for b in range(10)) for a in range(10))
# Verhoeff's permutation (0 1 5 8 9 4 2 7)(3 6) as a table, applied once per position
_VERHOEFF_STEP = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)


def _verhoeff_powers() -> tuple[tuple[int, ...], ...]:
    """The step permutation to the powers 0..7 (its order is 8, so position i uses i % 8)."""
    powers = [tuple(range(10))]
    for _ in range(7):
        powers.append(tuple(_VERHOEFF_STEP[d] for d in powers[-1]))
    return tuple(powers)


_VERHOEFF_P = _verhoeff_powers()


def verhoeff_valid(digits: str) -> bool:
    """Whether the last digit is the Verhoeff check digit of the others (Aadhaar uses it)."""
    if not _ascii_digits(digits):
        return False
    check = 0
    for position, char in enumerate(reversed(digits)):
        check = _D5[check][_VERHOEFF_P[position % 8][int(char)]]
    return check == 0


def _verhoeff(value: str, region: str | None = None) -> bool:
    return verhoeff_valid(value)


# Damm's totally anti-symmetric quasigroup of order 10 (H. M. Damm, 2004): the
# published table, zero on the diagonal, so a valid number reduces to 0.
_DAMM = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def damm_valid(digits: str) -> bool:
    """Whether the last digit is the Damm check digit of the others."""
    if not _ascii_digits(digits):
        return False
    interim = 0
    for char in digits:
        interim = _DAMM[interim][int(char)]
    return interim == 0


def _damm(value: str, region: str | None = None) -> bool:
    return damm_valid(value)


_MOD97_TEXT = re.compile(r"[A-Z0-9]{5,34}")


def mod97_valid(value: str) -> bool:
    """ISO 7064 MOD 97-10 as IBAN applies it: the first four characters moved to the end,
    letters read as 10..35, and the whole number leaves remainder 1 when divided by 97.

    Spaces are ignored (IBANs are printed in groups of four) and case is not significant.
    """
    text = value.replace(" ", "").upper()
    # ASCII only: upper() turns some letters into two ("ß" -> "SS") that would then pass
    if not text.isascii() or not _MOD97_TEXT.fullmatch(text):
        return False
    rearranged = text[4:] + text[:4]
    # int(c, 36) reads 0-9 as themselves and A-Z as 10-35, exactly the IBAN conversion
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _mod97(value: str, region: str | None = None) -> bool:
    return mod97_valid(value)


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
    "verhoeff": _verhoeff,
    "damm": _damm,
    "mod97": _mod97,
}
