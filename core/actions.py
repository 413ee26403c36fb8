"""What a policy's ``actions`` say to do with a flow: log, alert, block or redact.

Pure: the live Enforcer (``addons/enforcer.py``) acts on the decision before a
request leaves, and every path (live, ``leakmap analyze``, ``policy test``)
records it, so offline analysis says what the proxy would have done.

Each finding takes the action of the first rule that covers it (rules are
read in file order, like a firewall's); a finding no rule covers is logged.
The flow takes the strongest of its findings' actions, and the rule that
gave it: block > redact > alert > log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Protocol

from leakmap.policies.model import ActionRule

STRENGTH = {"log": 0, "alert": 1, "redact": 2, "block": 3}


class Judged(Protocol):
    """A finding as the rules see it (core Finding or the pipeline's FindingRecord)."""

    data_type: str
    category: str


@dataclass(frozen=True)
class Place:
    """Where a flow goes, as far as a rule asks."""

    host: str | None = None
    country: str | None = None
    operator_country: str | None = None
    watched: bool = False


@dataclass(frozen=True)
class Decision:
    action: str = "log"
    rule: ActionRule | None = None  # the rule that gave the flow its action
    per_finding: tuple[str, ...] = ()  # each finding's own action, in the findings' order

    @property
    def rule_label(self) -> str | None:
        return self.rule.label if self.rule is not None else None


def host_matches(glob: str, host: str) -> bool:
    """``*.xiaomi.com`` covers ``api.xiaomi.com`` and ``xiaomi.com`` itself; case-insensitive."""
    host = host.lower().rstrip(".")
    if glob.startswith("*.") and host == glob[2:]:
        return True
    return fnmatchcase(host, glob)


def covers(rule: ActionRule, finding: Judged, place: Place) -> bool:
    """Whether every condition ``rule`` sets holds for ``finding`` sent to ``place``."""
    return takes(rule, finding) and goes_to(rule, place)


def takes(rule: ActionRule, finding: Judged) -> bool:
    """Whether ``rule``'s data conditions (types, categories) hold for ``finding``."""
    if not (rule.data_types or rule.categories):
        return True
    return bool((rule.data_types and finding.data_type in rule.data_types)
                or (rule.categories and finding.category in rule.categories))


def goes_to(rule: ActionRule, place: Place) -> bool:
    """Whether the destination conditions ``rule`` sets hold for ``place``."""
    if rule.watched is not None and rule.watched != place.watched:
        return False
    if rule.countries is not None and place.country not in rule.countries:
        return False
    if rule.operator_countries is not None and place.operator_country not in rule.operator_countries:
        return False
    return rule.hosts is None or (place.host is not None and any(
        host_matches(glob, place.host) for glob in rule.hosts))


def decide(rules: Sequence[ActionRule], findings: Sequence[Judged], place: Place) -> Decision:
    """The action for a flow carrying ``findings`` to ``place``."""
    if not rules or not findings:
        return Decision(per_finding=("log",) * len(findings))
    chosen: list[ActionRule | None] = [
        next((rule for rule in rules if covers(rule, finding, place)), None) for finding in findings
    ]
    actions = tuple(rule.action if rule is not None else "log" for rule in chosen)
    strongest = max(actions, key=STRENGTH.__getitem__)
    if strongest == "log":
        return Decision(per_finding=actions)
    rule = next(rule for rule in chosen if rule is not None and rule.action == strongest)
    return Decision(strongest, rule, actions)


def could_act(rules: Sequence[ActionRule], place: Place) -> bool:
    """Whether a block or redact rule covers ``place`` for some data type: a request there
    that could not be analysed whole must not leave."""
    return any(STRENGTH[rule.action] >= STRENGTH["redact"] and goes_to(rule, place) for rule in rules)


def acts_somewhere(rules: Sequence[ActionRule], findings: Sequence[Judged], place: Place) -> bool:
    """Whether the request could be blocked or redacted wherever its address turns out to be:
    ``place`` with its host known and its country, operator country and watched flag
    unknown (its server's name did not resolve).  The rules decide as they would (the first
    that covers a finding wins, host globs count), for every country and operator country
    a rule names, some other one, watched or not."""
    countries = {country for rule in rules for country in rule.countries or ()} | {None}
    operators = {country for rule in rules for country in rule.operator_countries or ()} | {
        place.operator_country, None}
    return any(
        STRENGTH[decide(rules, findings, Place(place.host, country, operator, watched)).action]
        >= STRENGTH["redact"]
        for country in countries for operator in operators for watched in (False, True))


def enforces(rules: Sequence[ActionRule]) -> bool:
    """Whether any rule acts on a request before it leaves (block or redact)."""
    return any(STRENGTH[rule.action] >= STRENGTH["redact"] for rule in rules)
