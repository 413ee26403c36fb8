"""The PII policy: data types, their detectors, and how to load them from YAML.

A policy file looks like ``policies/default.yaml``.  Loading checks every key
and type and turns a mistake into one :class:`ConfigError` line
``FILE:LINE:COL: what is wrong (what was expected)``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from leakmap.core import validators
from leakmap.core.safe_regex import AnyFullmatch, PolicyRegex, UnsafeRegex, compile_policy_regex
from leakmap.core.yamlsource import ConfigError, NodePath, Sourced, load
from leakmap.geodb.entities import parse_entities
from leakmap.geodb.lookup import NetworkOverride, parse_networks

CATEGORIES = ("device_id", "subscriber_id", "contact", "message", "location", "account",
              "network", "custom")
SEVERITIES = ("info", "low", "medium", "high", "critical")
TRANSFORMS = ("plain", "url", "base64", "hex", "md5", "sha1", "sha256", "upper", "lower")
KNOWN_FIELDS = ("imei", "imsi", "iccid", "phone_number", "email", "android_id",
                "advertising_id", "mac_address", "carrier", "contacts", "sms", "sms.from",
                "sms.body", "location")
DEFAULT_TRANSFORMS = ("plain", "url", "base64", "hex", "md5", "sha1", "sha256")


@dataclass(frozen=True)
class ValueRule:
    """A regex (searched, or matched whole for key values) and a validator.

    Regexes run on RE2 when they can, else on Python's ``re`` once checked
    for catastrophic backtracking (see ``core/safe_regex.py``).
    """

    regex: PolicyRegex | None = None
    validator: str | None = None


@dataclass(frozen=True)
class KeyRule:
    names: tuple[PolicyRegex, ...]
    value: ValueRule | None = None
    _matches: Callable[[str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matches", AnyFullmatch(self.names))

    def matches(self, key: str) -> bool:
        """Whether one of the names matches the whole ``key`` (case-insensitively)."""
        return self._matches(key)


@dataclass(frozen=True)
class KnownRule:
    fields: tuple[str, ...]
    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS


@dataclass(frozen=True)
class DataType:
    name: str
    category: str
    severity: str
    description: str = ""
    pattern: ValueRule | None = None
    keys: KeyRule | None = None
    known: KnownRule | None = None


ACTIONS = ("log", "alert", "block", "redact")


@dataclass(frozen=True)
class ActionRule:
    """One entry of ``actions``: what to do with the findings it covers.

    A condition left out (None) holds for every finding and destination.
    """

    action: str
    number: int  # its place in the list, from 1
    name: str | None = None
    data_types: tuple[str, ...] | None = None
    categories: tuple[str, ...] | None = None
    watched: bool | None = None
    countries: tuple[str, ...] | None = None
    operator_countries: tuple[str, ...] | None = None
    hosts: tuple[str, ...] | None = None  # globs such as *.xiaomi.com

    @property
    def label(self) -> str:
        """How logs and the store name the rule: ``actions[2] block-ids``."""
        return f"actions[{self.number}]" + (f" {self.name}" if self.name else "")


@dataclass(frozen=True)
class Policy:
    name: str
    path: str
    sha256: str
    data_types: dict[str, DataType]
    watch: dict[str, Any] = field(default_factory=dict)
    actions: tuple[ActionRule, ...] = ()
    entities: tuple[dict[str, Any], ...] = ()  # checked entries, see geodb/entities.py
    networks: tuple[NetworkOverride, ...] = ()
    files: tuple[Path, ...] = ()  # this file and those it extends (a live run watches them)


def default_policy_path() -> Path:
    return Path(str(resources.files("leakmap.policies").joinpath("default.yaml")))


# --------------------------------------------------------------------------
# Checking a parsed file.

_TOP_KEYS = ("name", "description", "version", "extends", "data_types", "watch", "actions",
             "entities", "networks")
_TYPE_KEYS = ("category", "severity", "description", "pattern", "keys", "known")
_RULE_KEYS = ("regex", "validator")
_KEYS_KEYS = ("names", "value")
_KNOWN_KEYS = ("fields", "transforms")


class PolicyErrors(ConfigError):
    """Every problem found in a policy and the files it extends, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _lines(error: ConfigError) -> list[str]:
    return error.problems if isinstance(error, PolicyErrors) else str(error).splitlines()


class _Checker:
    """Reads one :class:`Sourced` policy; collects a problem per section and carries on.

    A check that cannot go on raises :class:`ConfigError`; the section it was
    checking (one data type, ``watch``, one action...) is dropped, the problem is
    kept, and the rest of the file is still checked (see :meth:`section`).
    """

    def __init__(self, source: Sourced) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, where: NodePath, problem: str, at_key: bool = False) -> ConfigError:
        return self.source.error(where, problem, at_key)

    def section[T](self, check: Callable[[], T]) -> T | None:
        """``check()``, or None with its problems kept."""
        try:
            return check()
        except ConfigError as e:
            self.problems.extend(_lines(e))
            return None

    def mapping(self, value: Any, where: NodePath, allowed: tuple[str, ...]) -> dict[str, Any]:
        """``value`` as a mapping of ``allowed`` keys; every unknown key is one problem."""
        if value is None and where:  # an empty section (``data_types:`` with nothing under it)
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, f"wrong type: {_kind(value)} (expected a mapping)")
        unknown = []
        for key in value:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(allowed)}"
                unknown.append(str(self.fail((*where, key), f"unknown key {key!r} ({hint})",
                                             at_key=True)))
        if unknown:
            raise PolicyErrors(unknown)
        return value

    def choice(self, value: Any, where: NodePath, options: tuple[str, ...], what: str) -> str:
        if not isinstance(value, str) or value not in options:
            near = difflib.get_close_matches(str(value), options, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(options)}"
            raise self.fail(where, f"unknown {what} {value!r} ({hint})")
        return value

    def strings(self, value: Any, where: NodePath) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(where, f"wrong type: {_kind(value)} (expected a list of strings)")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.fail((*where, index), f"wrong type: {_kind(item)} (expected a string)")
        return tuple(value)

    def regex(self, value: Any, where: NodePath, whole: bool = False) -> PolicyRegex:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"wrong type: {_kind(value)} (expected a regular expression "
                                   "string)")
        try:
            return compile_policy_regex(value, ignorecase=whole)
        except re.error as e:
            raise self.fail(where, f"regex does not compile: {e.msg} (expected a Python regex)") from e
        except UnsafeRegex as e:  # needs Python's engine (e.why_python) and could stall it
            raise self.fail(where, f"regex can backtrack catastrophically: {e.problem}, and "
                                   f"it needs Python's backtracking engine because {e.why_python} "
                                   "(expected a pattern without nested or overlapping "
                                   "repetition)") from e
        except (OverflowError, RecursionError, ValueError) as e:  # absurd repeat counts, nesting
            raise self.fail(where, f"regex cannot be used: {e} (expected a Python regex)") from e

    def value_rule(self, value: Any, where: NodePath) -> ValueRule:
        rule = self.mapping(value, where, _RULE_KEYS)
        before = len(self.problems)
        validator = None
        if rule.get("validator") is not None:
            validator = self.section(partial(self.choice, rule["validator"], (*where, "validator"),
                                             tuple(validators.VALIDATORS), "validator"))
        regex = self.regex(rule["regex"], (*where, "regex")) if "regex" in rule else None
        if len(self.problems) > before:
            raise PolicyErrors([])
        return ValueRule(regex, validator)

    def data_type(self, name: str, value: Any) -> DataType:
        where: NodePath = ("data_types", name)
        spec = self.mapping(value, where, _TYPE_KEYS)
        for required in ("category", "severity"):
            if spec.get(required) is None:
                raise self.fail(where, f"data type {name!r} has no {required} (expected "
                                       f"{required}: one of {', '.join(_CHOICES[required])})")
        before = len(self.problems)  # each part is checked, whatever the others hold
        category = self.section(partial(self.choice, spec["category"], (*where, "category"),
                                        CATEGORIES, "category"))
        severity = self.section(partial(self.choice, spec["severity"], (*where, "severity"),
                                        SEVERITIES, "severity"))
        pattern = self.section(partial(self.pattern_rule, spec.get("pattern"), (*where, "pattern")))
        keys = self.section(partial(self.key_rule, spec.get("keys"), (*where, "keys")))
        known = self.section(partial(self.known_rule, spec.get("known"), (*where, "known")))
        if len(self.problems) > before or category is None or severity is None:
            raise PolicyErrors([])  # its problems are kept; the data type is left out
        description = spec.get("description")
        return DataType(name=name, category=category, severity=severity,
                        description="" if description is None else str(description),
                        pattern=pattern, keys=keys, known=known)

    def pattern_rule(self, value: Any, where: NodePath) -> ValueRule | None:
        if value is None:
            return None
        pattern = self.value_rule(value, where)
        if pattern.regex is None:
            raise self.fail(where, "pattern has no regex (expected regex: '...')")
        return pattern

    def key_rule(self, value: Any, where: NodePath) -> KeyRule | None:
        if value is None:
            return None
        spec = self.mapping(value, where, _KEYS_KEYS)
        names = self.strings(spec.get("names") or [], (*where, "names"))
        if not names:
            raise self.fail(where, "keys has no names (expected names: a list of key name regexes)")
        compiled = tuple(
            self.regex(n, (*where, "names", i) if isinstance(spec["names"], list) else
                       (*where, "names"), whole=True) for i, n in enumerate(names)
        )
        rule = self.value_rule(spec["value"], (*where, "value")) if spec.get("value") else None
        return KeyRule(compiled, rule)

    def known_rule(self, value: Any, where: NodePath) -> KnownRule | None:
        if value is None:
            return None
        spec = self.mapping(value, where, _KNOWN_KEYS)
        fields = self.strings(spec.get("fields") or [], (*where, "fields"))
        if not fields:
            raise self.fail(where, "known has no fields (expected fields: device profile fields "
                                   "such as [imei])")
        spots = (lambda i: (*where, "fields", i)) if isinstance(spec["fields"], list) else (
            lambda i: (*where, "fields"))
        for index, name in enumerate(fields):
            self.choice(name, spots(index), KNOWN_FIELDS, "device profile field")
        transforms = self.strings(spec.get("transforms") or list(DEFAULT_TRANSFORMS),
                                  (*where, "transforms"))
        for index, chain in enumerate(transforms):
            self.transform_chain(chain, (*where, "transforms", index))
        return KnownRule(fields, transforms)

    def transform_chain(self, chain: str, where: NodePath) -> None:
        """``md5``, ``sha256(md5)``, ``url(base64(sha1))``: known steps, balanced brackets."""
        if not re.fullmatch(r"(?:\w+\()*\w+\)*", chain) or chain.count("(") != chain.count(")"):
            raise self.fail(where, f"transform {chain!r} is not a step or a chain of steps "
                                   "(expected e.g. sha256 or sha256(md5))")
        for step in re.findall(r"\w+", chain):
            self.choice(step, where, TRANSFORMS, "transform")


def _line_and_column(problem: str) -> tuple[int, int]:
    """Where a ``FILE:LINE:COL: ...`` problem of one file is, for sorting."""
    spot = re.search(r":(\d+):(\d+): ", problem)
    return (int(spot.group(1)), int(spot.group(2))) if spot else (0, 0)


_CHOICES = {"category": CATEGORIES, "severity": SEVERITIES}


def _kind(value: Any) -> str:
    """What a YAML value is, in the words of someone who wrote it."""
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "nothing"}
    return names.get(type(value), type(value).__name__)


_WATCH_KEYS = ("countries", "operator_countries", "allow")
_ACTION_KEYS = ("action", "name", "data_types", "categories", "watched", "countries",
                "operator_countries", "hosts")


@dataclass
class _Level:
    """What one file of an ``extends`` chain gives, merged over its parents."""

    data: dict[str, Any]
    types: dict[str, DataType]
    digest_input: bytes
    problems: list[str]
    files: list[Path] = field(default_factory=list)  # this file, then those it extends


def _load_tree(path: Path, chain: tuple[Path, ...]) -> _Level:
    """``path`` merged over what it extends; ``chain`` is the files that led here."""
    source = load(path, "policy")  # a syntax error stops this file: nothing else can be read
    checker = _Checker(source)
    raw = source.data if source.data is not None else {}
    top = checker.section(lambda: checker.mapping(raw, (), _TOP_KEYS))
    own = top if top is not None else ({k: v for k, v in raw.items() if k in _TOP_KEYS}
                                       if isinstance(raw, dict) else {})
    level = _parent_level(checker, path, own, chain)
    declared = own.get("data_types")
    if declared is not None and not isinstance(declared, dict):
        checker.problems.append(str(checker.fail(("data_types",), f"wrong type: {_kind(declared)} "
                                                 "(expected a mapping of data type names)")))
        declared = None
    names = {*level.types, *map(str, declared or {})}  # a broken type still has its name
    for name, spec in (declared or {}).items():
        data_type = checker.section(partial(checker.data_type, str(name), spec))
        if data_type is not None:
            level.types[str(name)] = data_type
    for key in ("name", "description", "version"):  # this file's own, not its parent's
        level.data[key] = own.get(key)
    if own.get("watch") is not None:
        level.data["watch"] = checker.section(lambda: _check_watch(checker, own["watch"])) or {}
    if "actions" in own:
        level.data["actions"] = _check_actions(checker, own["actions"], names)
    # entities and networks add up along the extends chain; this file's come last and win
    entities = checker.section(lambda: parse_entities(source, ("entities",), own.get("entities"),
                                                      from_policy=True))
    networks = checker.section(lambda: parse_networks(source, ("networks",), own.get("networks"),
                                                      label="policy"))
    level.data["entities"] = (*level.data.get("entities", ()), *(entities or ()))
    level.data["networks"] = (*level.data.get("networks", ()), *(networks or ()))
    level.problems += sorted(checker.problems, key=_line_and_column)
    level.digest_input = (level.digest_input + b"\0" if level.digest_input else b"") + source.raw
    level.files = [path, *level.files]
    return level


def _parent_level(checker: _Checker, path: Path, own: dict[str, Any],
                  chain: tuple[Path, ...]) -> _Level:
    """What ``own``'s ``extends`` gives (nothing when it extends nothing or cannot be read)."""
    empty = _Level({}, {}, b"", [])
    if own.get("extends") is None:
        return empty
    name = own["extends"]
    if not isinstance(name, str) or not name.strip():
        checker.problems.append(str(checker.fail(("extends",), f"wrong type: {_kind(name)} "
                                                 "(expected the path of a policy file)")))
        return empty
    parent = _extended_path(path, name)
    if parent in chain:
        loop = " -> ".join(p.name for p in (*chain[chain.index(parent):], parent))
        checker.problems.append(str(checker.fail(("extends",), f"extends cycle: {loop} (expected "
                                                 "a chain of policies that ends)")))
        return empty
    if not parent.is_file():
        checker.problems.append(str(checker.fail(("extends",), f"extended policy {parent} not found "
                                                 "(expected a path relative to this file)")))
        return empty
    try:
        return _load_tree(parent, (*chain, parent))
    except ConfigError as e:  # the parent could not be read at all (YAML syntax)
        return _Level({}, {}, b"", _lines(e))


def _check_watch(checker: _Checker, watch: Any) -> dict[str, Any]:
    """``watch: {countries: [CN], operator_countries: [CN]}`` or ``{allow: {...}}``, normalised."""
    spec = checker.mapping(watch, ("watch",), _WATCH_KEYS)
    result: dict[str, Any] = {}
    for key, value in spec.items():
        if key == "allow":
            allowed = checker.mapping(value, ("watch", "allow"), _WATCH_KEYS[:2])
            result["allow"] = {inner: _check_codes(checker, codes, ("watch", "allow", inner))
                               for inner, codes in allowed.items()}
        else:
            result[key] = _check_codes(checker, value, ("watch", key))
    return result


def _check_codes(checker: _Checker, value: Any, where: NodePath) -> list[str]:
    """Country codes as written (``NO`` is Norway, not YAML's false), upper-cased."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    spots = [(*where, index) for index in range(len(items))] if isinstance(value, list) else [where]
    codes = []
    for item, spot in zip(items, spots, strict=True):
        code = checker.source.as_written(spot) if not isinstance(item, dict | list) else None
        if code is None or len(code) != 2 or not code.isascii() or not code.isalpha():
            shown = code if code is not None else _kind(item)
            raise checker.fail(spot, f"{shown!r} is not a country code (expected ISO 3166 alpha-2 "
                                     "such as CN)")
        codes.append(code.upper())
    return codes


def _check_actions(checker: _Checker, value: Any, types: Iterable[str]) -> tuple[ActionRule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        checker.problems.append(str(checker.fail(("actions",), f"wrong type: {_kind(value)} "
                                                 "(expected a list of rules)")))
        return ()
    rules = (checker.section(partial(_check_action, checker, index, rule, types))
             for index, rule in enumerate(value))
    return tuple(rule for rule in rules if rule is not None)


def _check_action(checker: _Checker, index: int, value: Any, types: Iterable[str]) -> ActionRule:
    where: NodePath = ("actions", index)
    spec = checker.mapping(value, where, _ACTION_KEYS)
    for key in ("data_types", "categories", "countries", "operator_countries", "hosts"):
        if spec.get(key) == []:
            raise checker.fail((*where, key), f"{key} is empty (expected at least one entry, or "
                                              "leave the key out to cover every one)")
    if spec.get("action") is None:
        raise checker.fail(where, f"rule has no action (expected action: one of {', '.join(ACTIONS)})")
    action = checker.choice(spec["action"], (*where, "action"), ACTIONS, "action")
    data_types = categories = countries = operators = hosts = None
    if spec.get("data_types") is not None:
        data_types = checker.strings(spec["data_types"], (*where, "data_types"))
        _spots(spec["data_types"], (*where, "data_types"), data_types,
               lambda name, spot: checker.choice(name, spot, tuple(sorted(types)), "data type"))
    if spec.get("categories") is not None:
        categories = checker.strings(spec["categories"], (*where, "categories"))
        _spots(spec["categories"], (*where, "categories"), categories,
               lambda name, spot: checker.choice(name, spot, CATEGORIES, "category"))
    watched = spec.get("watched")
    if watched is not None and not isinstance(watched, bool):
        raise checker.fail((*where, "watched"), f"wrong type: {_kind(watched)} (expected true or "
                                                "false)")
    if spec.get("countries") is not None:
        countries = tuple(_check_codes(checker, spec["countries"], (*where, "countries")))
    if spec.get("operator_countries") is not None:
        operators = tuple(_check_codes(checker, spec["operator_countries"],
                                       (*where, "operator_countries")))
    if spec.get("hosts") is not None:
        hosts = tuple(h.lower() for h in checker.strings(spec["hosts"], (*where, "hosts")))
    name = spec.get("name")
    return ActionRule(action=action, number=index + 1, name=None if name is None else str(name),
                      data_types=data_types, categories=categories, watched=watched,
                      countries=countries, operator_countries=operators, hosts=hosts)


def _spots(value: Any, where: NodePath, items: tuple[str, ...],
           check: Callable[[str, NodePath], object]) -> None:
    """Check each of ``items`` at its own line (a list) or at the key's (a single string)."""
    for index, item in enumerate(items):
        check(item, (*where, index) if isinstance(value, list) else where)


def _extended_path(path: Path, name: str) -> Path:
    """``extends`` relative to the policy; a bare name of a shipped policy also works."""
    beside = (path.parent / name).resolve()
    shipped = default_policy_path().parent / name
    if not beside.exists() and "/" not in name and shipped.exists():
        return shipped.resolve()
    return beside


@dataclass(frozen=True)
class Checked:
    """A policy file read to the end: the policy, or every problem found on the way."""

    policy: Policy | None
    problems: list[str]
    warnings: list[str]


def check_policy(path: str | Path | None = None) -> Checked:
    """Read ``path`` (the shipped default when None) and everything it extends, and report
    every problem, one ``FILE:LINE:COL: what is wrong (what was expected)`` line each."""
    file_path = Path(path) if path else default_policy_path()
    resolved = file_path.resolve()
    try:
        level = _load_tree(resolved, (resolved,))
    except ConfigError as e:  # the file itself cannot be read or parsed
        return Checked(None, _lines(e), [])
    warnings = [f"{file_path}:1:1: warning: policy defines no data types, so it finds nothing"] \
        if not level.types and not level.problems else []
    if level.problems:
        return Checked(None, level.problems, warnings)
    data = level.data
    policy = Policy(
        name=str(data.get("name") or file_path.stem),
        path=str(file_path),
        sha256=hashlib.sha256(level.digest_input).hexdigest(),
        data_types=level.types,
        watch=dict(data.get("watch") or {}),
        actions=data.get("actions", ()),
        entities=data.get("entities", ()),
        networks=data.get("networks", ()),
        files=tuple(level.files),
    )
    return Checked(policy, [], warnings)


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at ``path`` (the shipped default when None); :class:`PolicyErrors` with
    every problem when it has any."""
    checked = check_policy(path)
    if checked.policy is None:
        raise PolicyErrors(checked.problems)
    return checked.policy
