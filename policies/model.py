"""The PII policy: data types, their detectors, and how to load them from YAML.

A policy file looks like ``policies/default.yaml``.  Loading checks every key
and type and turns a mistake into one :class:`ConfigError` line
``FILE:LINE:COL: what is wrong (what was expected)``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Policy:
    name: str
    path: str
    sha256: str
    data_types: dict[str, DataType]
    watch: dict[str, Any] = field(default_factory=dict)
    actions: tuple[dict[str, Any], ...] = ()
    entities: tuple[dict[str, Any], ...] = ()  # checked entries, see geodb/entities.py
    networks: tuple[NetworkOverride, ...] = ()


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


class _Checker:
    """Reads one :class:`Sourced` policy and reports the first problem."""

    def __init__(self, source: Sourced) -> None:
        self.source = source

    def fail(self, where: NodePath, problem: str, at_key: bool = False) -> ConfigError:
        return self.source.error(where, problem, at_key)

    def mapping(self, value: Any, where: NodePath, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"wrong type: {type(value).__name__} (expected a mapping)")
        for key in value:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(allowed)}"
                raise self.fail((*where, key), f"unknown key {key!r} ({hint})", at_key=True)
        return value

    def choice(self, value: Any, where: NodePath, options: tuple[str, ...], what: str) -> str:
        if value not in options:
            near = difflib.get_close_matches(str(value), options, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(options)}"
            raise self.fail(where, f"unknown {what} {value!r} ({hint})")
        return str(value)

    def strings(self, value: Any, where: NodePath) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "wrong type (expected a list of strings)")
        return tuple(value)

    def regex(self, value: Any, where: NodePath, whole: bool = False) -> PolicyRegex:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "wrong type (expected a regular expression string)")
        try:
            return compile_policy_regex(value, ignorecase=whole)
        except re.error as e:
            raise self.fail(where, f"regex does not compile: {e.msg} (expected a Python regex)") from e
        except UnsafeRegex as e:  # needs Python's engine (e.why_python) and could stall it
            raise self.fail(where, f"regex can backtrack catastrophically: {e.problem}, and "
                                   f"it needs Python's backtracking engine because {e.why_python} "
                                   "(expected a pattern without nested or overlapping "
                                   "repetition)") from e

    def value_rule(self, value: Any, where: NodePath) -> ValueRule:
        rule = self.mapping(value, where, _RULE_KEYS)
        regex = self.regex(rule["regex"], (*where, "regex")) if "regex" in rule else None
        validator = None
        if "validator" in rule:
            validator = self.choice(rule["validator"], (*where, "validator"),
                                    tuple(validators.VALIDATORS), "validator")
        return ValueRule(regex, validator)

    def data_type(self, name: str, value: Any) -> DataType:
        where: NodePath = ("data_types", name)
        spec = self.mapping(value, where, _TYPE_KEYS)
        for required in ("category", "severity"):
            if required not in spec:
                raise self.fail(where, f"data type {name!r} has no {required}")
        category = self.choice(spec["category"], (*where, "category"), CATEGORIES, "category")
        severity = self.choice(spec["severity"], (*where, "severity"), SEVERITIES, "severity")
        pattern = self.value_rule(spec["pattern"], (*where, "pattern")) if "pattern" in spec else None
        if pattern is not None and pattern.regex is None:
            raise self.fail((*where, "pattern"), "pattern needs a regex")
        return DataType(
            name=name,
            category=category,
            severity=severity,
            description=str(spec.get("description", "")),
            pattern=pattern,
            keys=self.key_rule(spec["keys"], (*where, "keys")) if "keys" in spec else None,
            known=self.known_rule(spec["known"], (*where, "known")) if "known" in spec else None,
        )

    def key_rule(self, value: Any, where: NodePath) -> KeyRule:
        spec = self.mapping(value, where, _KEYS_KEYS)
        names = self.strings(spec.get("names", []), (*where, "names"))
        if not names:
            raise self.fail(where, "keys needs at least one name pattern")
        compiled = tuple(
            self.regex(n, (*where, "names", i), whole=True) for i, n in enumerate(names)
        )
        rule = self.value_rule(spec["value"], (*where, "value")) if "value" in spec else None
        return KeyRule(compiled, rule)

    def known_rule(self, value: Any, where: NodePath) -> KnownRule:
        spec = self.mapping(value, where, _KNOWN_KEYS)
        fields = self.strings(spec.get("fields", []), (*where, "fields"))
        for index, name in enumerate(fields):
            self.choice(name, (*where, "fields", index), KNOWN_FIELDS, "device profile field")
        transforms = self.strings(spec.get("transforms", list(DEFAULT_TRANSFORMS)),
                                  (*where, "transforms"))
        for index, chain in enumerate(transforms):
            for step in re.split(r"[()]", chain):
                if step:
                    self.choice(step, (*where, "transforms", index), TRANSFORMS, "transform")
        return KnownRule(fields, transforms)


def _sequence(checker: _Checker, data: dict[str, Any], key: str) -> tuple[dict[str, Any], ...]:
    value = data.get(key, [])
    if not isinstance(value, list | tuple):
        raise checker.fail((key,), f"wrong type: {type(value).__name__} (expected a list)")
    return tuple(value)


def _load_tree(path: Path, seen: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, DataType],
                                                             bytes]:
    source = load(path, "policy")
    checker = _Checker(source)
    data = checker.mapping(source.data if source.data is not None else {}, (), _TOP_KEYS)
    types: dict[str, DataType] = {}
    digest_input = path.read_bytes()
    if "extends" in data:
        parent = _extended_path(path, str(data["extends"]))
        if parent in seen:
            raise checker.fail(("extends",), f"policy extends itself through {parent}")
        if not parent.exists():
            raise checker.fail(("extends",), f"extended policy {parent} not found")
        parent_data, types, parent_bytes = _load_tree(parent, (*seen, parent))
        data = {**parent_data, **{k: v for k, v in data.items() if k != "data_types"}}
        digest_input = parent_bytes + b"\0" + digest_input
    else:
        parent_data = {"entities": (), "networks": ()}
    declared = source.data.get("data_types", {}) if isinstance(source.data, dict) else {}
    if not isinstance(declared, dict):
        raise checker.fail(("data_types",), "wrong type (expected a mapping of data types)")
    for name, spec in declared.items():
        types[name] = checker.data_type(name, spec)
    data["actions"] = _sequence(checker, data, "actions")
    own = source.data if isinstance(source.data, dict) else {}
    # entities and networks add up along the extends chain; this file's come last and win
    data["entities"] = (*parent_data["entities"],
                        *parse_entities(source, ("entities",), own.get("entities"), from_policy=True))
    data["networks"] = (*parent_data["networks"],
                        *parse_networks(source, ("networks",), own.get("networks"), label="policy"))
    if isinstance(source.data, dict) and source.data.get("watch") is not None:
        data["watch"] = _check_watch(checker, source.data["watch"])
    return data, types, digest_input


_WATCH_KEYS = ("countries", "operator_countries", "allow")


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
    items = value if isinstance(value, list) else [value]
    spots = [(*where, index) for index in range(len(items))] if isinstance(value, list) else [where]
    codes = []
    for item, spot in zip(items, spots, strict=True):
        code = checker.source.as_written(spot) if not isinstance(item, dict | list) else None
        if code is None or len(code) != 2 or not code.isascii() or not code.isalpha():
            shown = code if code is not None else type(item).__name__
            raise checker.fail(spot, f"{shown!r} is not a country code (expected ISO 3166 alpha-2 "
                                     "such as CN)")
        codes.append(code.upper())
    return codes


def _extended_path(path: Path, name: str) -> Path:
    """``extends`` relative to the policy; a bare name of a shipped policy also works."""
    beside = (path.parent / name).resolve()
    shipped = default_policy_path().parent / name
    if not beside.exists() and "/" not in name and shipped.exists():
        return shipped.resolve()
    return beside


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at ``path`` (the shipped default when None)."""
    file_path = Path(path) if path else default_policy_path()
    data, types, digest_input = _load_tree(file_path.resolve(), (file_path.resolve(),))
    if not types:
        raise ConfigError(f"{file_path}:1:1: policy defines no data types")
    return Policy(
        name=str(data.get("name") or file_path.stem),
        path=str(file_path),
        sha256=hashlib.sha256(digest_input).hexdigest(),
        data_types=types,
        watch=dict(data.get("watch") or {}),
        actions=data["actions"],
        entities=data["entities"],
        networks=data["networks"],
    )
