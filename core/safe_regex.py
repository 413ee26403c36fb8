"""Policy regexes that cannot stall the proxy.

A policy's regexes run on every value of every flow, and a backtracking
engine can take exponential time on a pattern such as ``(a+)+b`` (or cubic
time on ``\\d+\\d+x``: seconds for one 1 kB value).  So a policy regex is
compiled by :func:`compile_policy_regex` in three steps:

1. Python's own parser reads it: Python's syntax, and Python's errors
   (``re.error``) for a pattern that does not compile.
2. The parsed pattern is written out again in RE2 syntax, construct by
   construct, with Python's meaning (``\\d`` is any Unicode decimal digit,
   ``\\w`` any letter, digit or ``_``, ``\\s`` Python's whitespace, ``.``
   anything but a newline).  When every construct has such an equivalent,
   RE2 runs the pattern: time linear in the text, whatever the pattern.
3. What RE2 cannot express (lookarounds, backreferences, conditionals, a
   Unicode ``\\b``, ``$`` before a final newline, atomic groups and
   possessive repeats, counts above 1,000) runs on Python's ``re``, but only
   after a static check finds no nested quantifier over something that can
   match the same text in more than one way (``(a+)+``, ``(a|a)*``,
   ``(\\d+)*``, ``(.*)*``, ``(x+x+)+y``) and no two long repetitions in a row
   that can take turns over the same characters (``\\d+\\d+``,
   ``.*[a-z].*``).  Anything else raises :class:`UnsafeRegex`.

A pattern that can match the empty string also stays on Python's engine when
the check allows it: after an empty match RE2's ``finditer`` moves on one
character, Python's tries for a longer match at the same place.

The result, :class:`PolicyRegex`, offers ``search``, ``fullmatch`` and
``finditer`` as ``re.Pattern`` does (without ``pos``/``endpos``), and the
matches answer ``group()``, ``start()``, ``end()`` and ``span()``.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

try:  # the dependency google-re2; without it, every pattern takes step 3
    import re2 as _re2
except ImportError:  # pragma: no cover - the dependency is declared
    _re2 = None

# re._parser and re._constants (sre_parse and sre_constants before 3.11) have no stubs
_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

RE2_AVAILABLE = _re2 is not None
# A repetition this much longer at most than at least (or unbounded) is "long":
# two long ones in a row over the same characters are rejected on Python's engine.
LONG_REPEAT = 32
_RE2_MAX_COUNT = 1000


class UnsafeRegex(ValueError):
    """A pattern that needs Python's backtracking engine and can backtrack catastrophically."""

    def __init__(self, problem: str, why_python: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.why_python = why_python


class Match(Protocol):
    def group(self) -> str: ...
    def start(self) -> int: ...
    def end(self) -> int: ...
    def span(self) -> tuple[int, int]: ...


class PolicyRegex:
    """A compiled policy regex, on RE2 (``engine == "re2"``) or on Python's ``re``."""

    __slots__ = (
        "engine",
        "finditer",
        "fullmatch",
        "ignorecase",
        "pattern",
        "re2_source",
        "search",
    )
    pattern: str
    ignorecase: bool
    engine: str
    re2_source: str | None  # the pattern in RE2 syntax, when RE2 runs it
    search: Callable[[str], Match | None]
    fullmatch: Callable[[str], Match | None]
    finditer: Callable[[str], Iterator[Match]]

    def __init__(self, pattern: str, ignorecase: bool, engine: str, re2_source: str | None,
                 calls: tuple[Callable[[str], Match | None], Callable[[str], Match | None],
                              Callable[[str], Iterator[Match]]]) -> None:
        self.pattern, self.ignorecase, self.engine = pattern, ignorecase, engine
        self.re2_source = re2_source
        self.search, self.fullmatch, self.finditer = calls

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PolicyRegex) and self.pattern == other.pattern
                and self.ignorecase == other.ignorecase)

    def __hash__(self) -> int:
        return hash((self.pattern, self.ignorecase))

    def __repr__(self) -> str:
        return f"PolicyRegex({self.pattern!r}, engine={self.engine!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # a process pool gets the policy by pickle
        return compile_policy_regex, (self.pattern, self.ignorecase)


def compile_policy_regex(pattern: str, ignorecase: bool = False) -> PolicyRegex:
    """``pattern`` ready to run; raises ``re.error`` or :class:`UnsafeRegex`."""
    flags = re.IGNORECASE if ignorecase else 0
    compiled = re.compile(pattern, flags)  # Python's syntax and errors first
    tree = _parser.parse(pattern, flags)
    why_python = "RE2 is not installed"
    on_re2 = None
    if _re2 is not None:
        try:
            on_re2 = _on_re2(pattern, ignorecase, _Re2Writer().write(tree, tree.state.flags))
        except _NoRe2 as e:
            why_python = str(e)
    if on_re2 is not None and not _nullable(tree):
        return on_re2
    try:
        _Checker().check(tree, why_python)
    except UnsafeRegex:
        if on_re2 is not None:
            return on_re2  # finditer differs from Python's only next to empty matches
        raise
    # a pattern that can match the empty string stays on Python when it safely can:
    # after an empty match Python's finditer looks for a longer one at the same spot
    calls = (compiled.search, compiled.fullmatch, compiled.finditer)
    return PolicyRegex(pattern, ignorecase, "re", None, calls)


def _nullable(items: Any) -> bool:
    """Whether the parsed pattern can match an empty string somewhere."""
    for op, av in items:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "IN", "ANY"):
            return False
        if name == "BRANCH" and not any(_nullable(branch) for branch in av[1]):
            return False
        if name == "SUBPATTERN" and not _nullable(av[3]):
            return False
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[0] and not _nullable(
                av[2]):
            return False
        if name == "ATOMIC_GROUP" and not _nullable(av):
            return False
    return True  # anchors, lookarounds, backreferences: maybe empty


class AnyFullmatch:
    """Whether any of ``patterns`` matches a whole text: ``AnyFullmatch(names)(key)``.

    Key names are tried against every field name of a flow: those on RE2
    are merged into one alternation, one call instead of one per name.
    """

    __slots__ = ("patterns", "tries")

    def __init__(self, patterns: Sequence[PolicyRegex]) -> None:
        self.patterns = tuple(patterns)
        on_re2 = [p for p in self.patterns if p.re2_source is not None]
        if len(on_re2) > 1:
            merged = "|".join(f"(?:{p.re2_source})" for p in on_re2)
            with contextlib.suppress(_NoRe2):  # too big together: one by one
                on_re2 = [_on_re2("|".join(p.pattern for p in on_re2), False, merged)]
        on_python = [p for p in self.patterns if p.re2_source is None]
        self.tries = tuple(p.fullmatch for p in (*on_re2, *on_python))

    def __call__(self, text: str) -> bool:
        return any(attempt(text) for attempt in self.tries)

    def __reduce__(self) -> tuple[Any, ...]:
        return AnyFullmatch, (self.patterns,)


class FullmatchIndex:
    """Which groups of patterns have one that matches a whole text: ``index(key) -> {0, 3}``.

    The classifier asks it of every new field name, once for all the data
    types with ``keys``: one RE2 pass over the name matches every name
    pattern RE2 runs (an ``RE2::Set``); those on Python's engine are tried
    one by one.
    """

    __slots__ = ("groups", "owners", "python", "re2_set")

    def __init__(self, groups: Sequence[Sequence[PolicyRegex]]) -> None:
        self.groups = tuple(tuple(group) for group in groups)
        self.owners: list[int] = []  # the group of each pattern in the set
        self.python: list[tuple[int, Callable[[str], Match | None]]] = []
        self.re2_set: Any = None
        on_re2 = [(n, p) for n, group in enumerate(self.groups) for p in group
                  if p.re2_source is not None]
        if _re2 is not None and on_re2:
            options = _re2.Options()
            options.log_errors = False
            candidate = _re2.Set.FullMatchSet(options)
            try:
                for owner, pattern in on_re2:
                    candidate.Add(pattern.re2_source)
                    self.owners.append(owner)
                candidate.Compile()
                self.re2_set = candidate
            except _re2.error:  # too big for one automaton: one by one
                self.owners = []
        self.python = [(n, p.fullmatch) for n, group in enumerate(self.groups) for p in group
                       if self.re2_set is None or p.re2_source is None]

    def __call__(self, text: str) -> set[int]:
        found: set[int] = set()
        if self.re2_set is not None:
            found.update(self.owners[i] for i in self.re2_set.Match(_encodable(text)) or ())
        for owner, fullmatch in self.python:
            if owner not in found and fullmatch(text):
                found.add(owner)
        return found

    def __reduce__(self) -> tuple[Any, ...]:
        return FullmatchIndex, (self.groups,)


# --------------------------------------------------------------------------
# Running on RE2.

_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> str:
    """``text`` without lone surrogates (JSON can carry them; UTF-8 cannot): U+FFFD each."""
    if not text.isascii() and _SURROGATE.search(text):
        return _SURROGATE.sub("\ufffd", text)
    return text


def _on_re2(pattern: str, ignorecase: bool, source: str) -> PolicyRegex:
    assert _re2 is not None
    options = _re2.Options()
    options.never_capture = True  # only whole matches are used: faster
    options.log_errors = False
    try:
        compiled = _re2.compile(source, options)
    except _re2.error as e:  # e.g. bigger than RE2's memory budget
        raise _NoRe2(f"RE2 cannot compile it ({e})") from e

    def search(text: str) -> Match | None:
        return compiled.search(_encodable(text))  # type: ignore[no-any-return]

    def fullmatch(text: str) -> Match | None:
        return compiled.fullmatch(_encodable(text))  # type: ignore[no-any-return]

    def finditer(text: str) -> Iterator[Match]:
        return compiled.finditer(_encodable(text))  # type: ignore[no-any-return]

    return PolicyRegex(pattern, ignorecase, "re2", source, (search, fullmatch, finditer))


class _NoRe2(Exception):
    """The pattern has a construct RE2 cannot run with Python's meaning (the message says which)."""


# Python's \s for str patterns (str.isspace), written out for RE2
_SPACE = (r"\x{9}-\x{d}\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}"
          r"\x{202f}\x{205f}\x{3000}")
_WORD = r"\p{L}\p{N}_"  # Python's \w: str.isalnum() or "_"
_ASCII_CATEGORIES = {
    "CATEGORY_DIGIT": ("0-9", False), "CATEGORY_NOT_DIGIT": ("0-9", True),
    "CATEGORY_WORD": ("0-9A-Za-z_", False), "CATEGORY_NOT_WORD": ("0-9A-Za-z_", True),
    "CATEGORY_SPACE": (r"\x{9}-\x{d} ", False), "CATEGORY_NOT_SPACE": (r"\x{9}-\x{d} ", True),
}
_UNICODE_CATEGORIES = {
    "CATEGORY_DIGIT": (r"\p{Nd}", False), "CATEGORY_NOT_DIGIT": (r"\p{Nd}", True),
    "CATEGORY_WORD": (_WORD, False), "CATEGORY_NOT_WORD": (_WORD, True),
    "CATEGORY_SPACE": (_SPACE, False), "CATEGORY_NOT_SPACE": (_SPACE, True),
}


def _re2_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


def _py_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else re.escape(char)


class _Re2Writer:
    """The parsed pattern in RE2 syntax with Python's meaning, or ``_NoRe2``."""

    def write(self, items: Any, flags: int) -> str:
        return "".join(self.item(op, av, flags) for op, av in items)

    def item(self, op: Any, av: Any, flags: int) -> str:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "IN", "ANY"):
            return self.atom(name, av, flags)
        if name == "BRANCH":
            return "(?:" + "|".join(self.write(branch, flags) for branch in av[1]) + ")"
        if name == "SUBPATTERN":
            group, add, remove, inner = av
            body = self.write(inner, (flags | add) & ~remove)
            return f"({body})" if group is not None else f"(?:{body})"
        if name in ("MAX_REPEAT", "MIN_REPEAT"):
            low, high, inner = av
            if low > _RE2_MAX_COUNT or (high != _c.MAXREPEAT and high > _RE2_MAX_COUNT):
                raise _NoRe2(f"it repeats more than {_RE2_MAX_COUNT} times")
            if high == _c.MAXREPEAT:
                count = {0: "*", 1: "+"}.get(low, f"{{{low},}}")
            else:
                count = f"{{{low}}}" if low == high else f"{{{low},{high}}}"
            lazy = "?" if name == "MIN_REPEAT" else ""
            return f"(?:{self.write(inner, flags)}){count}{lazy}"
        if name == "AT":
            return self.anchor(str(av), flags)
        raise _NoRe2({
            "ASSERT": "it has a lookaround", "ASSERT_NOT": "it has a lookaround",
            "GROUPREF": "it has a backreference", "GROUPREF_EXISTS": "it has a conditional group",
            "ATOMIC_GROUP": "it has an atomic group", "POSSESSIVE_REPEAT": "it has a possessive repeat",
        }.get(name, f"it uses {name}"))

    @staticmethod
    def anchor(code: str, flags: int) -> str:
        multiline = bool(flags & re.MULTILINE)
        if code == "AT_BEGINNING":
            return "(?m:^)" if multiline else r"\A"
        if code == "AT_BEGINNING_STRING":
            return r"\A"
        if code == "AT_END_STRING":
            return r"\z"
        if code == "AT_END" and multiline:
            return "(?m:$)"
        if code == "AT_END":
            raise _NoRe2("its '$' also matches before a final newline")
        if code in ("AT_BOUNDARY", "AT_NON_BOUNDARY") and flags & re.ASCII:
            return r"\b" if code == "AT_BOUNDARY" else r"\B"
        raise _NoRe2("its \\b or \\B is Unicode-aware")

    def atom(self, name: str, av: Any, flags: int) -> str:
        if name == "ANY":
            return r"(?s:.)" if flags & re.DOTALL else r"[^\n]"
        if flags & re.IGNORECASE and flags & re.ASCII:
            raise _NoRe2("it folds case in ASCII only")
        fold = "i" if flags & re.IGNORECASE else ""
        if name == "LITERAL":
            text = _re2_char(av)
        elif name == "NOT_LITERAL":
            text = f"[^{_re2_char(av)}]"
        else:
            text = self.char_set(av, flags)
        return f"(?{fold}:{text})" if fold else text

    @staticmethod
    def char_set(items: Any, flags: int) -> str:
        table = _ASCII_CATEGORIES if flags & re.ASCII else _UNICODE_CATEGORIES
        negate = False
        inside: list[str] = []  # members written inside one [...]
        outside: list[str] = []  # complemented categories, each its own [^...]
        for op, av in items:
            name = str(op)
            if name == "NEGATE":
                negate = True
            elif name == "LITERAL":
                inside.append(_re2_char(av))
            elif name == "RANGE":
                inside.append(f"{_re2_char(av[0])}-{_re2_char(av[1])}")
            elif name == "CATEGORY":
                members, complemented = table[str(av)]
                if not complemented:
                    inside.append(members)
                elif members == r"\p{Nd}":
                    inside.append(r"\P{Nd}")
                else:
                    outside.append(f"[^{members}]")
            else:
                raise _NoRe2(f"its character set uses {name}")
        if negate:
            if outside:
                raise _NoRe2("it complements a complemented category")
            return f"[^{''.join(inside)}]" if inside else r"(?s:.)"
        parts = ([f"[{''.join(inside)}]"] if inside else []) + outside
        if not parts:
            return "[^\\x{0}-\\x{10ffff}]"  # an empty set matches nothing
        return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


# --------------------------------------------------------------------------
# The static check for patterns left to Python's engine.


class _Chars:
    """The characters one position can match, as Python's ``re`` decides them."""

    __slots__ = ("astral", "flags", "source")

    def __init__(self, source: str, flags: int, astral: tuple[int, ...] = ()) -> None:
        self.source = source  # a one-character regex
        self.flags = flags & (re.IGNORECASE | re.ASCII | re.DOTALL)
        self.astral = astral  # range ends above the BMP, tried one by one

    def overlaps(self, other: _Chars) -> bool:
        return _overlap(self.source, self.flags, self.astral, other.source, other.flags,
                        other.astral)


# Characters above the BMP of each kind \d \w \s and their complements tell apart
_ASTRAL_SAMPLES = (0x1D7CE, 0x10400, 0x1F600, 0x20000, 0x1D360, 0xE0001, 0x10FFFF, 0x10000)


@lru_cache(maxsize=1)
def _bmp() -> str:
    return "".join(map(chr, range(0x10000)))


@lru_cache(maxsize=4096)
def _bmp_members(source: str, flags: int) -> tuple[tuple[int, int], ...]:
    """Runs of BMP code points ``source`` matches, as (start, end) pairs."""
    return tuple(m.span() for m in re.compile(f"(?:{source})+", flags).finditer(_bmp()))


@lru_cache(maxsize=4096)
def _overlap(a: str, a_flags: int, a_astral: tuple[int, ...],
             b: str, b_flags: int, b_astral: tuple[int, ...]) -> bool:
    runs_a, runs_b = _bmp_members(a, a_flags), _bmp_members(b, b_flags)
    i = j = 0
    while i < len(runs_a) and j < len(runs_b):
        if runs_a[i][1] <= runs_b[j][0]:
            i += 1
        elif runs_b[j][1] <= runs_a[i][0]:
            j += 1
        else:
            return True
    match_a, match_b = re.compile(a, a_flags).fullmatch, re.compile(b, b_flags).fullmatch
    return any(match_a(chr(code)) and match_b(chr(code))
               for code in {*_ASTRAL_SAMPLES, *a_astral, *b_astral})


def _any_overlap(left: Sequence[_Chars], right: Sequence[_Chars]) -> bool:
    return any(a.overlaps(b) for a in left for b in right)


_PY_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W", "CATEGORY_SPACE": r"\s", "CATEGORY_NOT_SPACE": r"\S",
}


def _chars_of(name: str, av: Any, flags: int) -> _Chars:
    if name == "ANY":
        return _Chars(".", flags)
    if name == "LITERAL":
        return _Chars(_py_char(av), flags, (av,) if av > 0xFFFF else ())
    if name == "NOT_LITERAL":
        return _Chars(f"[^{_py_char(av)}]", flags, (av,) if av > 0xFFFF else ())
    parts: list[str] = []
    astral: list[int] = []
    for op, value in av:
        kind = str(op)
        if kind == "NEGATE":
            parts.insert(0, "^")
        elif kind == "LITERAL":
            parts.append(_py_char(value))
            astral += [value] if value > 0xFFFF else []
        elif kind == "RANGE":
            parts.append(f"{_py_char(value[0])}-{_py_char(value[1])}")
            astral += [v for v in value if v > 0xFFFF]
        elif kind == "CATEGORY":
            parts.append(_PY_CATEGORIES.get(str(value), ""))
    return _Chars(f"[{''.join(parts)}]", flags, tuple(astral))


@dataclass(frozen=True)
class _Long:
    """A long repetition: how it is written, what it starts with, what it repeats."""

    text: str
    first: tuple[_Chars, ...]
    chars: tuple[_Chars, ...]

    def takes_turns_with(self, later: _Long) -> bool:
        """Whether some text can be read by either repetition (so split n ways)."""
        return _any_overlap(self.chars, later.first) and _any_overlap(self.first, later.chars)


Open = tuple[_Long, ...]  # long repetitions that can still be reading at a point of the pattern


def _through(open_: Open, chars: Sequence[_Chars]) -> Open:
    """The long repetitions still open after one character from ``chars``."""
    return tuple(e for e in open_ if _any_overlap(e.chars, chars))


@dataclass
class _Info:
    """What the check knows of one part of a pattern."""

    text: str  # the part, written out again (for messages)
    nullable: bool = False  # can match the empty string
    first: tuple[_Chars, ...] = ()  # characters a non-empty match can start with
    # characters that can extend a match at its end into a longer match
    extend: tuple[_Chars, ...] = ()
    chars: tuple[_Chars, ...] = ()  # every character it can match
    ambiguous: str | None = None  # a sub-part that can match one text in two ways


# items that need no (?:...) around them before a count
_SINGLE = ("LITERAL", "NOT_LITERAL", "IN", "ANY", "SUBPATTERN", "BRANCH", "ATOMIC_GROUP")


class _Checker:
    """Walks a parsed pattern; raises :class:`UnsafeRegex` at the first danger.

    Two dangers:

    * a repetition (at most more than once) of something that can match one
      text in more than one way, or whose end can extend into its next start
      (``(a+)+``, ``(a|a)*``, ``(\\d+,?)+``, ``(.*)*``): exponential;
    * a long repetition (unbounded, or at least ``LONG_REPEAT`` choices)
      that starts while an earlier one can still be reading, the two able to
      take turns over the same text (``\\d+\\d+``, ``.*[a-z].*``): cubic or
      worse once searched for at every position.  What is open flows through
      the pattern (into groups, alternatives and optional parts) and is
      closed by a character the earlier repetition cannot match.
    """

    def __init__(self) -> None:
        self.groups: dict[int, _Info] = {}
        self.why_python = ""

    def check(self, tree: Any, why_python: str) -> None:
        self.why_python = why_python
        self.sequence(tree, tree.state.flags, ())

    def fail(self, problem: str) -> UnsafeRegex:
        return UnsafeRegex(problem, self.why_python)

    # a sequence of items -------------------------------------------------

    def sequence(self, items: Any, flags: int, open_: Open) -> tuple[_Info, Open]:
        infos = []
        for op, av in items:
            info, open_ = self.item(op, av, flags, open_)
            infos.append(info)
        result = _Info("".join(info.text for info in infos),
                       nullable=all(i.nullable for i in infos))
        result.chars = tuple(c for i in infos for c in i.chars)
        result.ambiguous = next((i.ambiguous for i in infos if i.ambiguous), None)
        first: list[_Chars] = []
        for info in infos:
            first += info.first
            if not info.nullable:
                break
        extend: list[_Chars] = []
        for info in reversed(infos):
            extend += info.extend
            if not info.nullable:
                break
        result.first, result.extend = tuple(first), tuple(extend)
        if result.ambiguous is None:
            result.ambiguous = self.overlapping_neighbours(infos)
        return result, open_

    @staticmethod
    def overlapping_neighbours(infos: list[_Info]) -> str | None:
        """A variable part whose end can take the start of what follows: ``\\d+\\d``."""
        for index, info in enumerate(infos):
            if not info.extend:
                continue
            following: list[_Chars] = []
            last = index
            for later in infos[index + 1:]:
                following += later.first
                last += 1
                if not later.nullable:
                    break
            if _any_overlap(info.extend, following):
                return "".join(i.text for i in infos[index : last + 1])
        return None

    # one item ------------------------------------------------------------

    def item(self, op: Any, av: Any, flags: int, open_: Open) -> tuple[_Info, Open]:
        name = str(op)
        if name in ("LITERAL", "NOT_LITERAL", "IN", "ANY"):
            chars = _chars_of(name, av, flags)
            text = _py_char(av) if name == "LITERAL" else chars.source
            if name == "IN" and len(av) == 1 and str(av[0][0]) == "CATEGORY":
                text = _PY_CATEGORIES.get(str(av[0][1]), text)  # \d rather than [\d]
            return _Info(text, first=(chars,), chars=(chars,)), _through(open_, (chars,))
        if name == "BRANCH":
            return self.branch(av[1], flags, open_)
        if name == "SUBPATTERN":
            group, add, remove, inner = av
            info, open_ = self.sequence(inner, (flags | add) & ~remove, open_)
            info.text = f"({info.text})" if group is not None else f"(?:{info.text})"
            if group is not None:
                self.groups[group] = info
            return info, open_
        if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            return self.repeat(name, av, flags, open_)
        if name == "ATOMIC_GROUP":  # never backtracked into: nothing in it stays open
            inner, after = self.sequence(av, flags, open_)
            info = _Info(f"(?>{inner.text})", nullable=inner.nullable, first=inner.first,
                         chars=inner.chars)
            return info, tuple(e for e in after if e in open_)
        if name in ("ASSERT", "ASSERT_NOT"):
            inner, _ = self.sequence(av[1], flags, ())  # checked on its own; reads nothing
            sign = "=" if name == "ASSERT" else "!"
            return _Info(f"(?{sign}{inner.text})", nullable=True), open_
        if name == "GROUPREF":
            group = self.groups.get(av)
            if group is None:  # inside its own group: (a\1)
                return _Info(f"\\{av}", nullable=True), open_
            info = _Info(f"\\{av}", nullable=group.nullable, first=group.first,
                         chars=group.chars)
            return info, (open_ if group.nullable else _through(open_, group.chars))
        if name == "GROUPREF_EXISTS":
            branches = [av[1]] + ([av[2]] if av[2] is not None else [[]])
            info, open_ = self.branch(branches, flags, open_)
            info.text = f"(?({av[0]}){info.text[3:-1]})"
            return info, open_
        return _Info("", nullable=True), open_  # AT: an anchor or a word boundary

    def branch(self, branches: Any, flags: int, open_: Open) -> tuple[_Info, Open]:
        infos, after = [], []
        for branch in branches:
            info, out = self.sequence(branch, flags, open_)
            infos.append(info)
            after += [e for e in out if e not in after]
        text = "(?:" + "|".join(i.text for i in infos) + ")"
        result = _Info(text, nullable=any(i.nullable for i in infos))
        result.first = tuple(c for i in infos for c in i.first)
        result.chars = tuple(c for i in infos for c in i.chars)
        result.ambiguous = next((i.ambiguous for i in infos if i.ambiguous), None)
        overlapping = sum(i.nullable for i in infos) > 1 or any(
            _any_overlap(a.first, b.first)
            for n, a in enumerate(infos) for b in infos[n + 1:]
        )
        if overlapping and result.ambiguous is None:
            result.ambiguous = text
        extend = [c for i in infos for c in i.extend]
        if overlapping or result.nullable:  # "a" may grow into "ab" of another branch
            extend += result.chars
        result.extend = tuple(extend)
        return result, tuple(after)

    def repeat(self, name: str, av: Any, flags: int, open_: Open) -> tuple[_Info, Open]:
        low, high, items = av
        possessive = name == "POSSESSIVE_REPEAT"
        unbounded = high == _c.MAXREPEAT
        # the body is read once with what is open before it
        body, after = self.sequence(items, flags, open_)
        count = ("*" if low == 0 else "+" if low == 1 else f"{{{low},}}") if unbounded else (
            "?" if (low, high) == (0, 1) else f"{{{low}}}" if low == high
            else f"{{{low},{high}}}")
        single = len(items) == 1 and str(items[0][0]) in _SINGLE
        text = (body.text if single else f"(?:{body.text})") + count + {
            "MIN_REPEAT": "?", "POSSESSIVE_REPEAT": "+"}.get(name, "")
        iterated = high >= 2 and not possessive
        if iterated and (body.nullable or body.ambiguous or _any_overlap(body.extend, body.first)):
            raise self.fail(f"nested quantifier '{text}'")
        info = _Info(text, nullable=low == 0 or body.nullable, first=body.first,
                     chars=body.chars, ambiguous=body.ambiguous)
        if possessive:  # never gives back: nothing in it stays open
            kept = tuple(e for e in after if e in open_)
            return info, (kept + open_ if info.nullable else kept)
        if low != high:
            info.extend = (*body.extend, *body.first)
        else:
            info.extend = body.extend
        if high and (unbounded or high - low >= LONG_REPEAT):
            mine = _Long(text, body.first, body.chars)
            for earlier in open_:
                if earlier.takes_turns_with(mine):
                    raise self.fail(f"overlapping quantifiers '{earlier.text}' and '{text}'")
            after = (*after, mine)
        if info.nullable:  # skipped: what was open before still is
            after = (*after, *(e for e in open_ if e not in after))
        return info, after


_ANCHORS = frozenset({"AT_BEGINNING", "AT_BEGINNING_STRING", "AT_END", "AT_END_STRING"})


def _nodes(items: Any) -> Iterator[tuple[str, Any]]:
    """(op name, argument) of every node of a parsed pattern, nested ones too."""
    for op, av in items:
        yield str(op), av
        for part in av if isinstance(av, (tuple, list)) else (av,):
            if isinstance(part, _parser.SubPattern):
                yield from _nodes(part)
            elif isinstance(part, list) and part and isinstance(part[0], _parser.SubPattern):
                for branch in part:
                    yield from _nodes(branch)


def scans_joined(regex: PolicyRegex) -> bool:
    """Whether ``regex`` may run once over many values joined by NUL (see core/joined.py).

    It must not use ``^``, ``$``, ``\\A`` or ``\\Z`` (their meaning changes when
    values are joined), and its time must stay linear in the text: RE2, or on
    Python's engine no repetition without an upper bound.
    """
    try:
        flags = re.IGNORECASE if regex.ignorecase else 0
        nodes = list(_nodes(_parser.parse(regex.pattern, flags)))
    except (re.error, RecursionError, TypeError, ValueError):
        return False
    if any(op == "AT" and str(av) in _ANCHORS for op, av in nodes):
        return False
    return regex.engine == "re2" or not any(
        op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[1] == _c.MAXREPEAT
        for op, av in nodes
    )


_LOOSE_BOUND = 16


class _LooseWriter(_Re2Writer):
    """RE2 syntax for a superset of the pattern's matches: lookarounds and ``\\b`` dropped,
    a backreference replaced by its group's own pattern, and a repeat bounded above
    ``_LOOSE_BOUND`` left unbounded (``{1,64}`` is slow to compile, ``+`` is not)."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}

    def item(self, op: Any, av: Any, flags: int) -> str:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            return ""
        if name == "GROUPREF":
            if av not in self.groups:
                raise _NoRe2("it refers to a group not written yet")
            return f"(?:{self.groups[av]})"
        if name == "SUBPATTERN" and av[0] is not None:
            group, add, remove, inner = av
            self.groups[group] = body = self.write(inner, (flags | add) & ~remove)
            return f"(?:{body})"
        if name == "AT" and str(av) in ("AT_BOUNDARY", "AT_NON_BOUNDARY"):
            return ""
        if name in ("MAX_REPEAT", "MIN_REPEAT") and av[1] != _c.MAXREPEAT and av[1] > _LOOSE_BOUND:
            return super().item(op, (av[0], _c.MAXREPEAT, av[2]), flags)
        return super().item(op, av, flags)

    def edge(self, item: Any, flags: int, direction: int) -> str:
        """A one-character lookaround at the pattern's edge, as a character or the text's end."""
        op, (_way, inner) = item
        (char_op, char_av), = list(inner)
        if str(op) == "ASSERT":
            return self.atom(str(char_op), char_av, flags)
        other = self.atom(*_complement(char_op, char_av), flags)
        return f"(?:^|{other})" if direction < 0 else f"(?:{other}|$)"


def loose_source(regex: PolicyRegex) -> str | None:
    """A pattern (RE2/PCRE syntax) that matches wherever ``regex`` might, or None.

    A one-character lookbehind at the start or lookahead at the end is kept
    as a character (``(?<![0-9])`` becomes ``(?:^|[^0-9])``): the digits
    inside a longer number then do not count.  Other lookarounds and ``\\b``
    are dropped and a backreference becomes its group's own pattern (see
    :class:`_LooseWriter`): where the loose pattern finds nothing, ``regex``
    cannot match either.
    """
    flags = re.IGNORECASE if regex.ignorecase else 0
    try:
        tree = _parser.parse(regex.pattern, flags)
        flags = tree.state.flags
        items = list(tree)
        writer = _LooseWriter()
        head = writer.edge(items.pop(0), flags, -1) if _edge(items[:1], -1) else ""
        tail = writer.edge(items.pop(), flags, 1) if _edge(items[-1:], 1) else ""
        return head + writer.write(items, flags) + tail
    except (_NoRe2, re.error, RecursionError):
        return None


def _edge(items: list[Any], direction: int) -> bool:
    """Whether ``items`` is one lookaround in ``direction`` over one character class."""
    if len(items) != 1 or str(items[0][0]) not in ("ASSERT", "ASSERT_NOT"):
        return False
    way, inner = items[0][1]
    inner = list(inner)
    return way == direction and len(inner) == 1 and str(inner[0][0]) in (
        "LITERAL", "NOT_LITERAL", "IN")


def _complement(op: Any, av: Any) -> tuple[str, Any]:
    name = str(op)
    if name == "LITERAL":
        return "NOT_LITERAL", av
    if name == "NOT_LITERAL":
        return "LITERAL", av
    if av and str(av[0][0]) == "NEGATE":
        return "IN", av[1:]
    return "IN", [(_c.NEGATE, None), *av]
