"""Enforcement before a request leaves: what the rules say, and redaction of values.

Pure (no mitmproxy): ``addons/enforcer.py`` builds the request's
:class:`Exchange`, asks :func:`judge_request`, and for ``redact`` replaces the
written forms :func:`redaction_forms` lists in the URL, headers and body.

Redaction is checked, never hoped for: the redacted request is classified
again, and if a value the rule covers can still be found (wrapped in an
encoding the replacement does not know, say base64 of JSON), the request is
blocked instead.  A policy that says "this must not leave" fails closed.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

from leakmap.core.actions import STRENGTH, Decision, Place, decide
from leakmap.core.classify import Analysis, Finding
from leakmap.core.destination import Destination
from leakmap.core.exchange import Exchange
from leakmap.core.known import phone_forms
from leakmap.core.pipeline import Pipeline
from leakmap.core.validators import parse_phone

_HASHES = ("md5", "sha1", "sha256")
_MIN_FORM = 4  # shorter written forms would replace unrelated text


@dataclass
class Judgement:
    """What the rules say of one request, with the values found (unmasked: not stored)."""

    decision: Decision
    analysis: Analysis
    destination: Destination
    place: Place

    def covered(self, action: str) -> list[Finding]:
        """The findings whose own action is ``action``."""
        return [finding for finding, own in zip(self.analysis.findings, self.decision.per_finding,
                                                strict=True) if own == action]


def judge_request(pipeline: Pipeline, exchange: Exchange) -> Judgement:
    """Classify and locate ``exchange`` (a request not yet sent) and apply the policy's rules."""
    analysis = pipeline.classifier.classify(exchange)
    destination = pipeline.locator.locate(exchange)
    place = Place(exchange.host or exchange.sni, destination.country, destination.operator_country,
                  destination.watched)
    decision = decide(pipeline.classifier.policy.actions, analysis.findings, place)
    return Judgement(decision, analysis, destination, place)


def placeholder(text: str) -> str:
    """The same shape, no content: digits become ``0``, letters ``x`` or ``X``."""
    return "".join("0" if ch.isdigit() else ("X" if ch.isupper() else "x") if ch.isalpha() else ch
                   for ch in text)


def is_placeholder(text: str) -> bool:
    return all(ch in "0xX" or not ch.isalnum() for ch in text)


def _base_forms(value: str, region: str | None) -> list[str]:
    forms = [value, value.upper(), value.lower()]
    if any(ch.isdigit() for ch in value) and parse_phone(value, region) is not None:
        forms += phone_forms(value, region)
    return list(dict.fromkeys(forms))


def _encodings(form: str) -> Iterable[str]:
    """``form`` as an app may write it: percent-encoded, base64, hex, hashed."""
    raw = form.encode()
    yield form
    yield quote(form, safe="")
    yield quote_plus(form, safe="")
    yield quote(quote(form, safe=""), safe="")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        yield encoded.decode()
        yield encoded.decode().rstrip("=")
    yield raw.hex()
    yield raw.hex().upper()
    for name in _HASHES:
        digest = hashlib.new(name, raw).hexdigest()
        yield digest
        yield digest.upper()
        for outer in _HASHES:
            yield hashlib.new(outer, digest.encode()).hexdigest()


def redaction_forms(values: Iterable[str], region: str | None) -> list[str]:
    """Every written form of ``values`` to replace, longest first (a form inside a longer
    one must not break it up before the longer one is found)."""
    forms = {encoded for value in values if value for form in _base_forms(value, region)
             for encoded in _encodings(form) if len(encoded) >= _MIN_FORM}
    return sorted(forms, key=lambda form: (-len(form), form))


def redact_text(text: str, forms: Sequence[str]) -> tuple[str, int]:
    """``text`` with each of ``forms`` replaced by its placeholder, and how many were."""
    count = 0
    for form in forms:
        if form in text:
            count += text.count(form)
            text = text.replace(form, placeholder(form))
    return text, count


def redact_bytes(data: bytes, forms: Sequence[str]) -> tuple[bytes, int]:
    count = 0
    for form in forms:
        encoded = form.encode()
        if encoded in data:
            count += data.count(encoded)
            data = data.replace(encoded, placeholder(form).encode())
    return data, count


def still_there(pipeline: Pipeline, redacted: Exchange) -> list[Finding]:
    """What a redacted request still carries that the rules would redact or block:
    empty when redaction worked.  Placeholders found as values do not count."""
    judgement = judge_request(pipeline, redacted)
    left = [finding for finding, own in zip(judgement.analysis.findings,
                                            judgement.decision.per_finding, strict=True)
            if STRENGTH[own] >= STRENGTH["redact"] and not is_placeholder(finding.value)]
    if judgement.analysis.truncated and not left:  # not checked whole: not known to be clean
        left = [Finding("request", "unchecked", "", "", "not analysed whole", "", "")]
    return left
