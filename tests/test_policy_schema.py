"""The published policy JSON Schema: valid itself, true to the shipped policies and the loader."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator

from leakmap.core.validators import VALIDATORS
from leakmap.core.yamlsource import ConfigError
from leakmap.policies.model import ACTIONS, CATEGORIES, KNOWN_FIELDS, SEVERITIES, TRANSFORMS, load_policy

POLICIES = Path(__file__).parent.parent / "policies"

Policy = dict[str, Any]


@cache
def schema() -> dict[str, Any]:
    """The schema as installed: proves it ships as package data, not only in a checkout."""
    text = resources.files("leakmap.policies").joinpath("policy.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def problems(policy: Any, draft: type[Draft202012Validator] | type[Draft7Validator] = Draft202012Validator
             ) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in draft(schema()).iter_errors(policy)]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def described(spec: dict[str, Any]) -> bool:
    """Whether an editor has help to show: the property's description, else its $ref's."""
    if "description" in spec:
        return True
    ref = spec.get("$ref", "")
    return ref.startswith("#/$defs/") and "description" in schema()["$defs"][ref.split("/")[-1]]


def test_every_property_has_a_description() -> None:
    """Editors show a property's description as help; a missing one is a silent gap."""
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for name, spec in node.get("properties", {}).items():
                if not described(spec):
                    missing.append(f"{where}/properties/{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(schema(), "#")
    assert missing == []


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_policy_validates(path: Path) -> None:
    assert problems(yaml.safe_load(path.read_text("utf-8"))) == []


def test_the_shipped_policies_are_found() -> None:
    assert (POLICIES / "default.yaml") in set(POLICIES.glob("*.yaml"))


# -- the schema's choices are the loader's --------------------------------------


def enum_of(name: str) -> list[str]:
    values: list[str] = schema()["$defs"][name]["enum"]
    return values


def test_enums_match_the_loader() -> None:
    assert enum_of("category") == list(CATEGORIES)
    assert enum_of("severity") == list(SEVERITIES)
    assert enum_of("knownField") == list(KNOWN_FIELDS)
    assert set(enum_of("validator")) == set(VALIDATORS)
    assert schema()["$defs"]["actionRule"]["properties"]["action"]["enum"] == list(ACTIONS)


@pytest.mark.parametrize("step", TRANSFORMS)
def test_every_transform_step_is_accepted(step: str) -> None:
    assert problems(with_type(known={"fields": ["imei"], "transforms": [step]})) == []


# -- accepted and rejected documents -------------------------------------------


MINIMAL: Policy = {"data_types": {"imei": {"category": "device_id", "severity": "high"}}}


def with_type(**spec: Any) -> Policy:
    """A policy with one data type ``x`` made of ``spec`` plus a category and a severity."""
    return {"data_types": {"x": {"category": "custom", "severity": "low", **spec}}}


def changed(edit: Callable[[Policy], object]) -> Policy:
    policy = copy.deepcopy(MINIMAL)
    edit(policy)
    return policy


FULL: Policy = {
    "name": "lab",
    "description": "everything the format allows",
    "version": "2026.1",
    "extends": "default.yaml",
    "data_types": {
        "aadhaar": {
            "category": "custom", "severity": "critical", "description": "Aadhaar",
            "pattern": {"regex": "(?<![0-9])[2-9][0-9]{11}(?![0-9])", "validator": "verhoeff"},
            "keys": {"names": ["aadhaar", "uid"], "value": {"regex": "[0-9]{12}", "validator": "verhoeff"}},
        },
        "iban": {"category": "account", "severity": "high", "keys": {"names": "iban",
                                                                      "value": {"validator": "mod97"}}},
        "own.imei_2": {"category": "device_id", "severity": "info",
                       "known": {"fields": "imei", "transforms": "sha256(md5)"}},
        "_sms": {"category": "message", "severity": "medium",
                 "known": {"fields": ["sms.body", "sms.from"],
                           "transforms": ["plain", "url(base64(md5))", "upper", "lower"]}},
    },
    "watch": {"countries": ["CN", "hk"], "operator_countries": "CN",
              "allow": {"countries": ["IN"], "operator_countries": ["IN"]}},
    "actions": [
        {"name": "no ids to watched", "data_types": ["imei", "aadhaar"], "watched": True, "action": "block"},
        {"data_types": "iban", "categories": "account", "action": "redact"},
        {"categories": ["contact", "message"], "countries": ["CN"], "operator_countries": ["CN"],
         "hosts": ["*.xiaomi.com"], "watched": False, "action": "log"},
        {"countries": "CN", "operator_countries": "cn", "hosts": "*.mi.com", "action": "redact"},
        {"action": "alert"},
    ],
    "entities": [
        {"name": "Lab backend", "country": "IN", "hosting": False, "parent": "Lab",
         "domains": ["lab.example"], "customer_domains": ["labcloud.example"],
         "asns": [64512, "AS64513"], "note": "ours"},
        {"name": "Xiaomi", "domains": ["mi-lab.example"]},
    ],
    "networks": [
        {"cidr": "127.0.0.0/8", "country": "CN", "asn": 4808, "as_org": "China Unicom Beijing",
         "operator": "Xiaomi", "operator_country": "CN"},
        {"cidr": "10.0.0.0/8", "asn": "AS64512"},
    ],
}


def test_every_key_of_the_format_is_accepted() -> None:
    assert problems(FULL) == []
    assert problems(MINIMAL) == []


@pytest.mark.parametrize("version", [1, "1.0"])
def test_version_is_a_string_or_an_integer(version: object) -> None:
    assert problems({**MINIMAL, "version": version}) == []


BROKEN: dict[str, Policy] = {
    "unknown top-level key": {**MINIMAL, "data_typse": {}},
    "unknown data type key": with_type(categroy="custom"),
    "bad category": changed(lambda p: p["data_types"]["imei"].update(category="identifier")),
    "bad severity": changed(lambda p: p["data_types"]["imei"].update(severity="hgih")),
    "missing severity": changed(lambda p: p["data_types"]["imei"].pop("severity")),
    "missing category": changed(lambda p: p["data_types"]["imei"].pop("category")),
    "bad validator": with_type(pattern={"regex": "[0-9]{15}", "validator": "lunh"}),
    "bad validator in keys": with_type(keys={"names": ["imei"], "value": {"validator": "lunh"}}),
    "pattern without regex": with_type(pattern={"validator": "luhn"}),
    "unknown pattern key": with_type(pattern={"regex": "x", "flags": "i"}),
    "keys without names": with_type(keys={"value": {"regex": "x"}}),
    "keys with no names": with_type(keys={"names": []}),
    "empty regex": with_type(pattern={"regex": ""}),
    "bad known field": with_type(known={"fields": ["imie"]}),
    "known without fields": with_type(known={"transforms": ["md5"]}),
    "known with no fields": with_type(known={"fields": []}),
    "bad transform": with_type(known={"fields": ["imei"], "transforms": ["mdd5"]}),
    "unclosed transform chain": with_type(known={"fields": ["imei"], "transforms": ["sha256(md5"]}),
    "empty transform chain": with_type(known={"fields": ["imei"], "transforms": ["md5()"]}),
    "bad data type name": {"data_types": {"9lives": {"category": "custom", "severity": "low"}}},
    "data type not a mapping": {"data_types": {"imei": "device_id"}},
    "bad action": {**MINIMAL, "actions": [{"action": "drop"}]},
    "action rule without action": {**MINIMAL, "actions": [{"watched": True}]},
    "unknown action rule key": {**MINIMAL, "actions": [{"action": "block", "watch": True}]},
    "action watched not boolean": {**MINIMAL, "actions": [{"action": "block", "watched": "yes"}]},
    "action bad category": {**MINIMAL, "actions": [{"action": "alert", "categories": ["pii"]}]},
    "action hosts not strings": {**MINIMAL, "actions": [{"action": "alert", "hosts": [{"glob": "*"}]}]},
    "placeholder of two characters": {**MINIMAL, "actions": [{"action": "redact", "placeholder": "xx"}]},
    "placeholder on a block rule": {**MINIMAL, "actions": [{"action": "block", "placeholder": "x"}]},
    "actions not a list": {**MINIMAL, "actions": {"action": "alert"}},
    "country code of 3 letters": {**MINIMAL, "watch": {"countries": ["CHN"]}},
    "allow country of 3 letters": {**MINIMAL, "watch": {"allow": {"countries": ["IND"]}}},
    "action country of 3 letters": {**MINIMAL, "actions": [{"action": "alert", "countries": ["CHN"]}]},
    "unquoted NO read as false": {**MINIMAL, "watch": {"allow": {"countries": ["SE", False]}}},
    "unknown watch key": {**MINIMAL, "watch": {"deny": {"countries": ["CN"]}}},
    "unknown allow key": {**MINIMAL, "watch": {"allow": {"operators": ["CN"]}}},
    "entity without name": {**MINIMAL, "entities": [{"country": "CN"}]},
    "unknown entity key": {**MINIMAL, "entities": [{"name": "X", "country": "CN", "asn": 1}]},
    "network without cidr": {**MINIMAL, "networks": [{"country": "CN"}]},
    "unknown network key": {**MINIMAL, "networks": [{"cidr": "10.0.0.0/8", "city": "Beijing"}]},
    "network asn not a number": {**MINIMAL, "networks": [{"cidr": "10.0.0.0/8", "asn": "ASX"}]},
}


@pytest.mark.parametrize("policy", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_policy_is_rejected(policy: Policy) -> None:
    assert problems(policy) != []


# -- the loader agrees -------------------------------------------------------------

# Rules only the schema states: the loader takes any data type name.
SCHEMA_ONLY = {"bad data type name"}


def written(folder: Path, policy: Policy) -> Path:
    """``policy`` as a YAML file (``extends: default.yaml`` finds the shipped default)."""
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False), "utf-8")
    return path


def test_what_the_schema_accepts_the_loader_loads(tmp_path: Path) -> None:
    policy = load_policy(written(tmp_path, FULL))
    assert {"aadhaar", "iban", "imei"} <= set(policy.data_types)
    assert len(policy.actions) == len(FULL["actions"])


@pytest.mark.parametrize("name", [name for name in BROKEN if name not in SCHEMA_ONLY])
def test_what_the_schema_rejects_the_loader_rejects(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        load_policy(written(tmp_path, BROKEN[name]))


# -- editors on draft-07 -------------------------------------------------------------


def test_editors_that_know_only_draft_07_judge_alike() -> None:
    """Many YAML language servers validate as draft-07. The schema keeps to keywords that
    draft has (``$defs`` is reached as a plain JSON pointer), so they judge as it does."""
    assert problems(FULL, Draft7Validator) == []
    still_accepted = [name for name, policy in BROKEN.items() if not problems(policy, Draft7Validator)]
    assert still_accepted == []
