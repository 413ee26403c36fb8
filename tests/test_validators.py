"""Validators a policy can name: published check-digit examples, altered digits, odd input."""

from __future__ import annotations

import itertools

import pytest

from leakmap.core.validators import VALIDATORS, damm_valid, mod97_valid, verhoeff_valid

# An Aadhaar-shaped number: 11 digits and the Verhoeff check digit computed for them.
AADHAAR = "234123412346"

# Published IBAN examples: the UK one from the ECBS/SWIFT IBAN registry, the German one
# from the Bundesbank's documentation of the German IBAN.
IBANS = ["GB82WEST12345698765432", "DE89370400440532013000"]


def altered(value: str) -> list[str]:
    """``value`` with one digit changed, at every digit position, to every other digit."""
    return [value[:i] + d + value[i + 1:]
            for i, char in enumerate(value) if char.isdigit()
            for d in "0123456789" if d != char]


def swapped(value: str) -> list[str]:
    """``value`` with two different adjacent characters exchanged."""
    return [value[:i] + value[i + 1] + value[i] + value[i + 2:]
            for i in range(len(value) - 1) if value[i] != value[i + 1]]


@pytest.mark.parametrize("name", ["verhoeff", "damm", "mod97"])
def test_new_validators_are_in_the_table(name: str) -> None:
    assert name in VALIDATORS


# -- Verhoeff ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["2363", AADHAAR])
def test_verhoeff_accepts_published_examples(value: str) -> None:
    # 236 -> 3 is the scheme's usual worked example
    assert VALIDATORS["verhoeff"](value, None)


@pytest.mark.parametrize("value", ["2360", "2364", "2369", "234123412345"])
def test_verhoeff_rejects_a_wrong_check_digit(value: str) -> None:
    assert not VALIDATORS["verhoeff"](value, None)


def test_verhoeff_has_exactly_one_check_digit_for_any_number() -> None:
    for digits in itertools.product("0123456789", repeat=3):
        body = "".join(digits)
        assert sum(verhoeff_valid(body + d) for d in "0123456789") == 1


@pytest.mark.parametrize("value", ["2363", AADHAAR])
def test_verhoeff_catches_every_single_digit_error_and_adjacent_swap(value: str) -> None:
    assert not any(verhoeff_valid(wrong) for wrong in altered(value))
    assert not any(verhoeff_valid(wrong) for wrong in swapped(value))


# -- Damm ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["5724", "112946"])
def test_damm_accepts_published_examples(value: str) -> None:
    # 572 -> 4 is the algorithm's usual worked example; 11294 -> 6 another
    assert VALIDATORS["damm"](value, None)


@pytest.mark.parametrize("value", ["5724", "112946"])
def test_damm_catches_every_single_digit_error_and_adjacent_swap(value: str) -> None:
    assert not any(damm_valid(wrong) for wrong in altered(value))
    assert not any(damm_valid(wrong) for wrong in swapped(value))


def test_damm_has_exactly_one_check_digit_for_any_number() -> None:
    for digits in itertools.product("0123456789", repeat=3):
        body = "".join(digits)
        assert sum(damm_valid(body + d) for d in "0123456789") == 1


# -- MOD 97-10 (IBAN) ------------------------------------------------------------


@pytest.mark.parametrize("value", IBANS)
def test_mod97_accepts_published_ibans(value: str) -> None:
    assert VALIDATORS["mod97"](value, None)


@pytest.mark.parametrize("value", ["GB82 WEST 1234 5698 7654 32", "gb82west12345698765432",
                                   "De89 3704 0044 0532 0130 00"])
def test_mod97_ignores_spaces_and_case(value: str) -> None:
    assert mod97_valid(value)


@pytest.mark.parametrize("value", IBANS)
def test_mod97_rejects_altered_digits_and_swaps(value: str) -> None:
    assert not any(mod97_valid(wrong) for wrong in altered(value))
    assert not any(mod97_valid(wrong) for wrong in swapped(value))


@pytest.mark.parametrize("value", [
    "GB82-WEST-1234-5698-7654-32",   # only spaces are ignored
    "GB82WEST1234569876543_",        # not [A-Z0-9]
    "GB82WEßT12345698765432",        # upper() would make "SS" of it
    "GB8",                           # shorter than 5
    "GB82" + "0" * 31,               # longer than 34
    "",
])
def test_mod97_rejects_other_text(value: str) -> None:
    assert not mod97_valid(value)


# -- all of them -----------------------------------------------------------------


# not two or more ASCII digits alone; most would pass if read as the digits in them
NOT_ASCII_DIGITS = ["", " ", "3", "²³", "٢٣٦٣", "２３６３", "236\n3", "2363\n", " 2363", "-2363",
                    "+5724", "57 24", "5724\x00"]
ODD_INPUT = [*NOT_ASCII_DIGITS, "\x00", "a" * 10_000, "9" * 10_000, "GB82WEST12345698765432\u00a0"]


@pytest.mark.parametrize("name", ["verhoeff", "damm"])
def test_check_digit_validators_take_ascii_digits_only(name: str) -> None:
    check = VALIDATORS[name]
    assert [value for value in NOT_ASCII_DIGITS if check(value, None)] == []


@pytest.mark.parametrize("name", sorted(VALIDATORS))
def test_no_validator_raises(name: str) -> None:
    for value in ODD_INPUT:
        assert isinstance(VALIDATORS[name](value, "IN"), bool)
        assert isinstance(VALIDATORS[name](value, None), bool)
