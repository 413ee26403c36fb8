"""Policy regexes cannot stall the proxy: RE2 when it can, a checked Python regex otherwise.

A pattern that RE2 can run with Python's meaning runs on RE2 (linear time,
whatever the pattern).  One that needs Python's engine (a lookaround, a
backreference, a Unicode ``\\b``, ``$``) is loaded only when the static
check finds no nested or overlapping repetition; else the policy is refused
with ``FILE:LINE:COL``.
"""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leakmap.core.safe_regex import (
    AnyFullmatch,
    FullmatchIndex,
    PolicyRegex,
    UnsafeRegex,
    compile_policy_regex,
)
from leakmap.core.yamlsource import ConfigError
from leakmap.policies.model import load_policy

HEAD = "data_types:\n  x:\n    category: custom\n    severity: low\n"


def policy_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    return str(caught.value)


def position(text: str, needle: str) -> str:
    """``LINE:COL`` (from 1) of the quote that opens ``needle`` in ``text``."""
    index = text.index(needle) - 1
    line = text.count("\n", 0, index) + 1
    return f"{line}:{index - text.rfind(chr(10), 0, index)}"


# Catastrophic shapes, each with a construct only Python's engine has: rejected.
CATASTROPHIC = [
    # (where in the data type, the pattern, what the message names)
    ("pattern", r"(?<![0-9])(\d+)*x", r"nested quantifier '(\d+)*'"),
    ("pattern", r"\b(a+)+\b", r"nested quantifier '(a+)+'"),
    ("pattern", r"(?<=id=)(.*)*;", r"nested quantifier '(.*)*'"),
    ("pattern", r"(\w+\s?)+$", r"nested quantifier '(\w+\s?)+'"),
    ("pattern", r"(?=a)(a|a)*c", r"nested quantifier '(a(?:|))*'"),
    ("pattern", r"(?<=x)(?:a{1,10}){1,10}b", r"nested quantifier '(?:a{1,10}){1,10}'"),
    ("pattern", r"(?<!\d)\d+\d+x", r"overlapping quantifiers '\d+' and '\d+'"),
    ("pattern", r"\b(x+x+)+y", r"overlapping quantifiers 'x+' and 'x+'"),
    ("pattern", r"(?<=k)(?:,\d+)*\d+", r"overlapping quantifiers '\d+' and '\d+'"),
    ("value", r"(?<=\s)(\d+)*", r"nested quantifier '(\d+)*'"),
    ("names", r"(a+)+\b", r"nested quantifier '(a+)+'"),
]


def data_type_with(where: str, regex: str) -> str:
    quoted = "'" + regex.replace("'", "''") + "'"
    if where == "pattern":
        return HEAD + f"    pattern: {{regex: {quoted}}}\n"
    if where == "value":
        return HEAD + f"    keys:\n      names: [imei]\n      value: {{regex: {quoted}}}\n"
    return HEAD + f"    keys:\n      names: [imei, {quoted}]\n"


@pytest.mark.parametrize(("where", "regex", "named"), CATASTROPHIC,
                         ids=[f"{w}:{r}" for w, r, _ in CATASTROPHIC])
def test_catastrophic_python_regex_is_refused_at_its_position(
    tmp_path: Path, where: str, regex: str, named: str
) -> None:
    text = data_type_with(where, regex)
    message = policy_error(tmp_path, text)
    quoted = "'" + regex.replace("'", "''") + "'"
    spot = position(text, quoted[1:])
    assert message.startswith(f"{tmp_path / 'p.yaml'}:{spot}: regex can backtrack "
                              "catastrophically: "), message
    assert f"catastrophically: {named}," in message
    assert message.endswith("(expected a pattern without nested or overlapping repetition)")
    assert "Python's backtracking engine because" in message
    assert "\n" not in message


def test_the_message_names_why_re2_could_not_take_it(tmp_path: Path) -> None:
    lookbehind = policy_error(tmp_path, data_type_with("pattern", r"(?<![0-9])(\d+)*x"))
    assert "because it has a lookaround" in lookbehind
    backref = policy_error(tmp_path, data_type_with("pattern", r"(a)(\1+)+"))
    assert "because it has a backreference" in backref
    dollar = policy_error(tmp_path, data_type_with("pattern", r"(a|aa)+$"))
    assert "'$' also matches before a final newline" in dollar


@pytest.mark.parametrize("regex", [r"(a+)+b", r"(a|a)*c", r"(\d+)*x", r"(.*)*;",
                                   r"(x+x+)+y", r"\d+\d+\d+x", r"(\w+\s?)+\Z"])
def test_the_same_shapes_without_python_only_constructs_run_on_re2(regex: str) -> None:
    compiled = compile_policy_regex(regex)
    assert compiled.engine == "re2"
    started = time.monotonic()
    # on Python's engine each of these takes longer than the age of the universe
    for text in ("a" * 50_000 + "!", "1" * 50_000, "x" * 50_000, "ab " * 20_000 + "!"):
        assert compiled.search(text) is None or compiled.search(text) is not None
        list(compiled.finditer(text))
    assert time.monotonic() - started < 5


def test_policy_with_such_a_shape_loads_and_matches(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "    pattern: {regex: '(?:[0-9]+-?)+[0-9]{4}'}\n")
    rule = load_policy(path).data_types["x"].pattern
    assert rule is not None and rule.regex is not None and rule.regex.engine == "re2"
    assert [m.group() for m in rule.regex.finditer("card 1234-5678-9012-3456 ok")] == [
        "1234-5678-9012-3456"]


# --------------------------------------------------------------------------
# What must keep loading.


def test_default_policy_loads_with_its_lookbehinds_and_backreference_on_python() -> None:
    policy = load_policy()
    engines = {name: t.pattern.regex.engine for name, t in policy.data_types.items()
               if t.pattern is not None and t.pattern.regex is not None}
    assert engines == dict.fromkeys(["imei", "iccid", "phone_number", "email", "mac_address"],
                                    "re")
    imei = policy.data_types["imei"]
    assert imei.keys is not None
    assert all(name.engine == "re2" for name in imei.keys.names)
    assert imei.keys.matches("IMEI") and imei.keys.matches("device_id")
    assert imei.keys.matches("imei_MD5") and imei.keys.matches("imei2")
    assert not imei.keys.matches("imeis") and not imei.keys.matches("my_imei")


ORDINARY = [
    r"\b\d{15}\b", r"(?<![0-9])[2-9][0-9]{11}(?![0-9])", r"(?<=imei=)\d+",
    r"^\w+@\w+\.\w+$", r"(?<!\d)\d+(?:\.\d+)?(?!\d)", r"(?<=a)[^,]*,[^,]*",
    r"(?<![0-9])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9])", r"(?<=x)(a|ab)*c",
    r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}\b", r"(?i)\buser(?:_?id)?\b",
    r"([0-9a-f]{2})(?::\1){5}", r"\b(?:\d{4}[ -]?){3}\d{4}\b", r"\w+(?:[-.]\w+)*@x\.com$",
    r"(?<![\w.])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}\.[a-z]{2,24}",
]
ADVERSARIAL = ["a" * 1200, "1" * 1200, " " * 1200, "ab" * 600, "a." * 600, "1-" * 600,
               "x" + "a" * 1200, "user_" * 240, "@" * 1200, "aa@" * 400 + "!", "1 " * 600]


@pytest.mark.parametrize("regex", ORDINARY)
def test_ordinary_python_patterns_load_and_stay_fast_on_adversarial_text(regex: str) -> None:
    compiled = compile_policy_regex(regex)
    started = time.monotonic()
    for text in ADVERSARIAL:  # windows are about 1,200 characters at most
        list(compiled.finditer(text))
        compiled.fullmatch(text)
    assert time.monotonic() - started < 5


def test_a_regex_that_does_not_compile_is_still_a_compile_error(tmp_path: Path) -> None:
    message = policy_error(tmp_path, HEAD + "    pattern: {regex: '(a+'}\n")
    assert ":5:22: regex does not compile: missing ), unterminated subpattern" in message


# --------------------------------------------------------------------------
# RE2 runs a pattern with Python's meaning.

DIFFERENTIAL = [
    r"\d+", r"\w+", r"\s+", r"\D\W\S", r"[^\d\s]+", r"[\w.-]+@[\w-]+", r"[\W\d]+",
    r"(?i)stra(?:ss|ß)e", r"(?i)[a-z]+\d", r"a.c", r"(?s)a.c", r"(?m)^\w+", r"(?m)\w+$",
    r"^\w+", r"\A\d+", r"\d+\Z", r"(?a)\w+", r"(?a)\bab\b", r"x*?y", r"(ab|a)(c|bcd)",
    r"[\u0660-\u0669]+", r"\U0001F600+", r"[^a-c]", r"(?i:I)", r"(?x) a b  # comment",
    r"\d{2,4}?", r"colou?r", r"[\s\S]", r"(?i)[^k]", r"\N{LATIN SMALL LETTER E WITH ACUTE}",
]
ALPHABET = "aAbBcçdkK\u212a\u017fsSß0123456789\u0660\u0665\u06f1\u0969 \t\n\r\x0b\x0c\x1c\x85" \
           "\xa0\u2003\u3000_-.@xyéÉ\u0301ıİ\U0001F600\U0001D7CE中"


@pytest.mark.parametrize("regex", DIFFERENTIAL)
@settings(max_examples=60, deadline=None, database=None)
@given(text=st.text(alphabet=ALPHABET, max_size=40))
def test_re2_finds_what_python_finds(regex: str, text: str) -> None:
    compiled = compile_policy_regex(regex)
    assert compiled.engine == "re2", regex
    python = re.compile(regex)
    ours = [(m.span(), m.group()) for m in compiled.finditer(text) if m.group()]
    theirs = [(m.span(), m.group()) for m in python.finditer(text) if m.group()]
    if "ı" in text or "İ" in text:  # the one case folding RE2 does not share
        return
    assert ours == theirs
    assert bool(compiled.fullmatch(text)) == bool(python.fullmatch(text))
    assert bool(compiled.search(text)) == bool(python.search(text))


@pytest.mark.parametrize("regex", [r"\bab\b", r"ab$", r"(?<=a)b", r"(a)\1", r"a++",
                                   r"(?>a+)b", r"a{1001}", r"(a)?(?(1)b|c)", r"(?ai)k",
                                   r"[^\W\d]"])
def test_what_re2_cannot_mean_the_same_runs_on_python(regex: str) -> None:
    compiled = compile_policy_regex(regex)
    assert compiled.engine == "re" and compiled.re2_source is None


def test_lone_surrogates_from_json_do_not_break_re2() -> None:
    compiled = compile_policy_regex(r"\d{3}")
    assert compiled.engine == "re2"
    text = "x 123 \ud800 é 456"
    assert [m.group() for m in compiled.finditer(text)] == ["123", "456"]
    assert compiled.search("\udfff") is None
    assert compiled.fullmatch("12\ud83d") is None


def test_key_names_are_matched_whole_and_case_insensitively_as_one() -> None:
    names = [compile_policy_regex(n, ignorecase=True) for n in ("a", "ab", "b+c", r"x\b")]
    matches = AnyFullmatch(names)
    assert matches("AB") and matches("a") and matches("bbbC") and matches("X")
    assert not matches("abc") and not matches("") and not matches("xy")


def test_a_pattern_that_can_match_nothing_stays_on_python_when_it_safely_can() -> None:
    lazy = compile_policy_regex(r"b??")
    assert lazy.engine == "re"  # Python's finditer: after the empty match, "b" at the same spot
    assert [m.span() for m in lazy.finditer("ab")] == [(0, 0), (1, 1), (1, 2), (2, 2)]
    # unsafe on Python: RE2 takes it rather than refusing it
    assert compile_policy_regex(r"(a*)*b").engine == "re2"


def test_one_index_answers_for_every_data_type_as_each_would() -> None:
    policy = load_policy()
    rules = [t.keys for t in policy.data_types.values() if t.keys is not None]
    index = FullmatchIndex([rule.names for rule in rules])
    assert index.re2_set is not None
    keys = ["IMEI", "imei2", "device_id", "Device-ID", "phone_number", "MOBILE_NUM", "tel", "lat",
            "Latitude", "carrier_name", "contacts_phone", "x", "", "imei" * 300, "sim_serial",
            "SIM_SERIALNUMBER", "gaid", "idfa", "bssid", "ll", "imei\ud800", "ſsaid"]
    for key in keys:
        assert index(key) == {n for n, rule in enumerate(rules) if rule.matches(key)}, key


def test_compiled_policy_survives_pickling() -> None:
    policy = load_policy()
    again = pickle.loads(pickle.dumps(policy))
    assert again == policy
    assert again.data_types["imei"].keys is not None
    assert again.data_types["imei"].keys.matches("Device_IMEI")
    regex = compile_policy_regex(r"(a+)+b")
    assert isinstance(pickle.loads(pickle.dumps(regex)), PolicyRegex)


def test_unsafe_regex_carries_the_problem_and_the_reason() -> None:
    with pytest.raises(UnsafeRegex) as caught:
        compile_policy_regex(r"(?<=a)(b|b)+")
    assert caught.value.problem.startswith("nested quantifier")
    assert caught.value.why_python == "it has a lookaround"


# -- the pattern gate (core/pattern_gate.py): loosened forms never hide a match ----

_GATED = [
    r"(?<![0-9.])[0-9]{15}(?![0-9])",
    r"(?<![\w+])\+[1-9][0-9 ()-]{6,18}[0-9]",
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}\.[A-Za-z]{2,24}",
    r"(?<![0-9A-Fa-f:-])[0-9A-Fa-f]{2}([:-])(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:-])",
    r"(?<=id=)[0-9]{4,}",
    r"\bx[0-9]+(?=y)",
    r"(?i)abc(?!d)",
]


def test_the_pattern_gate_lists_every_value_a_pattern_matches() -> None:
    from leakmap.core.joined import Joined
    from leakmap.core.pattern_gate import PatternGate

    regexes = [compile_policy_regex(p) for p in _GATED]
    gate = PatternGate(regexes)  # compiled once: hyperscan takes a moment
    assert gate.covered == frozenset(range(len(regexes)))  # all of them loosen and compile

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet="0123456789.+-() @abcdxyzABC:_=é\x00", max_size=40),
                    min_size=1, max_size=6))
    def check(values: list[str]) -> None:
        found_somewhere(gate.candidates(Joined(values)), regexes, values)

    check()


def found_somewhere(candidates: dict[int, set[int]] | None, regexes: list, values: list[str]) -> None:
    for index, regex in enumerate(regexes):
        for position, value in enumerate(values):
            if regex.search(value) is not None:
                assert candidates is None or position in candidates.get(index, set()), (
                    _GATED[index], value)
