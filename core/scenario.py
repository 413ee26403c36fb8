"""Test protocols as files: a scenario names the device profile, the policy and the steps.

``scenarios/fsecure-redmi-2014.yaml``::

    name: fsecure-redmi-2014
    description: F-Secure's 2014 test of the Xiaomi Redmi 1S
    device: ../samples/redmi-1s.yaml     # relative to this file
    policy: strict-defence.yaml          # relative to this file, else a shipped policy
    steps:
      - {name: boot, say: Switch the phone on with the SIM in; skip every sign-in.}
      - {name: contact, say: Add one contact with a phone number.}

Errors name the file, line and column, like a policy's.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leakmap.core.yamlsource import ConfigError, NodePath, Sourced, load

_TOP_KEYS = ("name", "description", "device", "policy", "steps", "sources")
_STEP_KEYS = ("name", "say", "expect")


@dataclass(frozen=True)
class ScenarioStep:
    number: int  # from 1
    name: str
    say: str  # what the tester is asked to do
    expect: str = ""  # what the step should show, for the tester's eyes


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    steps: tuple[ScenarioStep, ...]
    description: str = ""
    device: str = ""  # absolute path, or "" when the scenario names none
    policy: str = ""


def _text(source: Sourced, value: Any, where: NodePath, what: str) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool) or not str(value).strip():
        raise source.error(where, f"{what} must be text (expected a non-empty string)")
    return str(value).strip()


def _keys(source: Sourced, value: Any, where: NodePath, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise source.error(where, f"wrong type: {type(value).__name__} (expected a mapping)")
    for key in value:
        if key not in allowed:
            near = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"one of {', '.join(allowed)}"
            raise source.error((*where, key), f"unknown key {key!r} ({hint})", at_key=True)
    return value


def _file(source: Sourced, value: Any, key: str, shipped: Path | None) -> str:
    """A path relative to the scenario; a bare policy name may be one leakmap ships."""
    name = _text(source, value, (key,), key)
    beside = (source.path.parent / name).resolve()
    if not beside.exists() and shipped is not None and "/" not in name and (shipped / name).exists():
        return str(shipped / name)
    if not beside.exists():
        raise source.error((key,), f"{key} file {beside} not found (expected a path relative to "
                                   "the scenario)")
    return str(beside)


def load_scenario(path: str | Path) -> Scenario:
    """The scenario at ``path``; :class:`ConfigError` naming the spot of any mistake."""
    from leakmap.policies.model import default_policy_path

    source = load(path, "scenario")
    data = _keys(source, source.data if source.data is not None else {}, (), _TOP_KEYS)
    steps_value = data.get("steps")
    if not isinstance(steps_value, list) or not steps_value:
        raise source.error(("steps",), "a scenario needs steps (expected a list of {name, say})")
    steps = []
    for index, item in enumerate(steps_value):
        spec = _keys(source, item, ("steps", index), _STEP_KEYS)
        if "name" not in spec or "say" not in spec:
            raise source.error(("steps", index), "a step needs a name and what to say (expected "
                                                 "{name: ..., say: ...})")
        steps.append(ScenarioStep(index + 1, _text(source, spec["name"], ("steps", index, "name"), "name"),
                                  _text(source, spec["say"], ("steps", index, "say"), "say"),
                                  str(spec.get("expect") or "").strip()))
    names = [step.name for step in steps]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise source.error(("steps", index, "name"), f"step name {name!r} given twice (expected "
                                                         "each step named once)")
    return Scenario(
        name=_text(source, data.get("name") or Path(path).stem, ("name",), "name"),
        path=Path(path).resolve(),
        steps=tuple(steps),
        description=str(data.get("description") or "").strip(),
        device=_file(source, data["device"], "device", None) if data.get("device") else "",
        policy=(_file(source, data["policy"], "policy", default_policy_path().parent)
                if data.get("policy") else ""),
    )


def step_label(step: ScenarioStep | None) -> str | None:
    return f"{step.number} {step.name}" if step is not None else None


__all__ = ["ConfigError", "Scenario", "ScenarioStep", "load_scenario", "step_label"]
