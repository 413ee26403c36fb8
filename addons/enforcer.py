"""Enforcer: acts on a policy's ``block`` and ``redact`` rules before a request leaves.

Only when the policy has such a rule does a request wait for its analysis
(on a thread, so the event loop goes on); otherwise this addon costs nothing.

* ``block``: the request never reaches the server; the phone gets a 403 whose
  plain-text body names the rule.
* ``redact``: each value a redact rule covers is replaced in the URL, the
  headers and the body by a placeholder of the same shape (digits ``0``,
  letters ``x``), in every written form leakmap knows (``core/enforce.py``).
  The redacted request is classified again; if anything covered is still
  there, the request is blocked instead.
* If applying the policy fails (a leakmap bug), the request is not sent either:
  a 502 says so. A policy that blocks or redacts fails closed.

The decision goes to ``flow.metadata["leakmap_enforced"]``; the Inspector
records the flow as blocked or redacted with the rule, and analyses the
request as the phone sent it (kept on the flow), not as it left.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable

from mitmproxy import http

from leakmap.addons.flows import exchange_from_flow
from leakmap.addons.handover import AS_SENT_REQUEST, ENFORCED_KEY
from leakmap.addons.inspector import ORIGINAL_ATTRIBUTE, Inspector
from leakmap.core.actions import acts_somewhere, could_act, enforces
from leakmap.core.decode import decompress
from leakmap.core.enforce import (
    Judgement,
    judge_request,
    redact_bytes,
    redact_text,
    redaction_forms,
    still_there,
)
from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import Pipeline

log = logging.getLogger("leakmap")

_RESOLVE_TIMEOUT = 2.0  # seconds to find a server address that the proxy has not yet looked up
_MAX_REDACTED_BODY = 32 * 2**20  # a body that inflates beyond this is blocked, not redacted


class Enforcer:
    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector
        self.judged_by: tuple[Pipeline | None, bool] = (None, False)  # and whether it enforces

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """A sync hook: without block or redact rules (most runs) a request costs one test.
        With them it returns the judgement, which mitmproxy awaits before the request goes on
        (an awaitable a sync hook returns is awaited, addonmanager.invoke_addon)."""
        pipeline = self.inspector.pipeline
        if pipeline is None:
            return None
        if self.judged_by[0] is not pipeline:  # a new policy: asked once, not per request
            self.judged_by = (pipeline, enforces(pipeline.classifier.policy.actions))
        # a replayed request leaves too, so it is judged like any other; a response already
        # there (server replay, another addon) means nothing leaves
        if flow.response is not None or not self.judged_by[1]:
            return None
        return self._enforce(flow, pipeline)

    async def _enforce(self, flow: http.HTTPFlow, pipeline: Pipeline) -> None:
        try:
            await self._judge(flow, pipeline)
        except Exception as e:  # a policy that blocks or redacts fails closed, never open
            log.error("leakmap: could not apply the policy to %s (%s: %s); not sent",
                      flow.request.pretty_url[:200], type(e).__name__, e)
            if flow.response is None:
                self._refuse(flow, pipeline, f"applying policy {pipeline.classifier.policy.name!r} "
                             f"failed ({type(e).__name__})", f"policy failed: {type(e).__name__}")

    def _refuse(self, flow: http.HTTPFlow, pipeline: Pipeline, why: str, rule: str) -> None:
        """Not sent, for a reason that is not a rule's verdict: a 502 that says why."""
        flow.response = http.Response.make(
            502, f"leakmap did not send this request: {why}.\n".encode(),
            {"Content-Type": "text/plain; charset=utf-8", "X-Leakmap-Action": "block"})
        flow.metadata[ENFORCED_KEY] = {"action": "block", "rule": rule,
                                       "policy_sha256": pipeline.classifier.policy.sha256}

    async def _judge(self, flow: http.HTTPFlow, pipeline: Pipeline) -> None:
        exchange = exchange_from_flow(flow)
        if exchange is None:
            return
        if exchange.server_ip is None:
            exchange.server_ip = await _address(exchange.host, exchange.server_port)
        try:
            judgement = await asyncio.to_thread(judge_request, pipeline, exchange)
        except Exception as e:  # a leakmap bug, not the payload (decoders never raise on it)
            raise RuntimeError(f"judging the request failed: {type(e).__name__}: {e}") from e
        action = judgement.decision.action
        if flow.request.stream:  # mitmproxy has sent the body already: nothing left to stop
            log.error("leakmap: %s was streamed (stream_large_bodies): a policy cannot block or "
                      "redact it", flow.request.pretty_url[:200])
            return
        rules = pipeline.classifier.policy.actions
        if action not in ("block", "redact") and exchange.server_ip is None and acts_somewhere(
                rules, judgement.analysis.findings, judgement.place):
            self._refuse(flow, pipeline, "its server's name did not resolve, so where it would "
                         "go is unknown, and the policy blocks or redacts data it carries when sent "
                         "to some destinations", "destination unknown")
            return
        if action not in ("block", "redact") and judgement.analysis.truncated and could_act(
                rules, judgement.place):
            self._refuse(flow, pipeline, "it could not be analysed whole within the limits "
                         "(time budget or body size), and the policy blocks or redacts data sent "
                         "there", "not analysed whole")
            return
        if action == "block":
            self._block(flow, pipeline, judgement)
        elif action == "redact":
            await self._redact(flow, exchange, pipeline, judgement)

    def _block(self, flow: http.HTTPFlow, pipeline: Pipeline, judgement: Judgement,
               why: str = "") -> None:
        rule = judgement.decision.rule_label or "?"
        types = ", ".join(dict.fromkeys(f.data_type for f in judgement.covered("block"))) or \
            ", ".join(dict.fromkeys(f.data_type for f in judgement.covered("redact")))
        place = judgement.destination.country or "country unknown"
        body = (f"leakmap blocked this request: it carries {types} to {flow.request.pretty_host} "
                f"({place}), and policy {pipeline.classifier.policy.name!r} says {rule}: block"
                f"{why}.\n")
        flow.response = http.Response.make(403, body.encode(), {
            "Content-Type": "text/plain; charset=utf-8", "X-Leakmap-Action": "block"})
        self._remember(flow, "block", rule + why, pipeline)

    async def _redact(self, flow: http.HTTPFlow, exchange: Exchange, pipeline: Pipeline,
                      judgement: Judgement) -> None:
        covered = judgement.covered("redact")
        forms = redaction_forms((f.value for f in covered), pipeline.classifier.device.region)
        as_sent = flow.request.copy()
        if not _replace_in_request(flow.request, forms):
            flow.request = as_sent
            self._block(flow, pipeline, judgement, " (the request body could not be redacted)")
            return
        redacted = exchange_from_flow(flow)
        if redacted is None:
            return
        redacted.server_ip = exchange.server_ip
        left = await asyncio.to_thread(still_there, pipeline, redacted)
        if left:
            flow.request = as_sent
            kinds = ", ".join(dict.fromkeys(f"{f.data_type} ({f.encoding})" for f in left))
            self._block(flow, pipeline, judgement, f" (redaction could not remove {kinds})")
            return
        setattr(flow, ORIGINAL_ATTRIBUTE, exchange)  # the Inspector judges what the phone sent
        setattr(flow, AS_SENT_REQUEST, as_sent)  # and the capture keeps it
        self._remember(flow, "redact", judgement.decision.rule_label or "?", pipeline)

    def _remember(self, flow: http.HTTPFlow, action: str, rule: str, pipeline: Pipeline) -> None:
        flow.metadata[ENFORCED_KEY] = {"action": action, "rule": rule,
                                       "policy_sha256": pipeline.classifier.policy.sha256}
        log.info("leakmap: %s %s %s by %s", action.upper(), flow.request.method,
                    flow.request.pretty_url[:200], rule)


def _replace_in_request(request: http.Request, forms: list[str]) -> bool:
    """Replace ``forms`` in ``request``; False when its body cannot be read to do it."""
    path, _ = redact_text(request.path, forms)
    request.path = path
    for name in dict.fromkeys(request.headers.keys()):
        values = request.headers.get_all(name)
        redacted = [redact_text(value, forms)[0] for value in values]
        if redacted != values:
            request.headers.set_all(name, redacted)
    if not request.raw_content:
        return True
    body = _plain_body(request)
    if body is None:
        return False
    redacted_body, count = redact_bytes(body, forms)
    if count:
        request.content = redacted_body  # encoded again as its Content-Encoding says
    return True


def _plain_body(request: http.Request) -> bytes | None:
    """The body with its Content-Encoding undone, within a cap (a bomb is not inflated)."""
    body = request.raw_content or b""
    encoding = request.headers.get("content-encoding", "")
    for step in reversed([e for e in encoding.split(",") if e.strip()]):
        if step.strip().lower() == "identity":
            continue
        try:
            body, hit_cap = decompress(body, step, _MAX_REDACTED_BODY)
        except ValueError:
            return None
        if hit_cap:
            return None
    return body


async def _address(host: str | None, port: int | None) -> str | None:
    """The address a name resolves to, for judging where a request would go."""
    if not host:
        return None
    loop = asyncio.get_running_loop()
    try:
        answers = await asyncio.wait_for(
            loop.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM), _RESOLVE_TIMEOUT)
    except (OSError, TimeoutError, UnicodeError):
        return None
    return str(answers[0][4][0]) if answers else None
