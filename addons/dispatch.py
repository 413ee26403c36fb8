"""leakmap's addons as one object in mitmproxy's addon chain, with their ``response`` work
done in batches.

mitmproxy calls an event's hook by walking every addon of its chain, and
every addon's ``addons`` below it: for each one a ``getattr`` of the hook's
name, inside nested generators.  It does that for every event of every
request, twice per flow event (the event, then ``update``), whether or not
an addon has the hook.  :class:`Leakmap` holds leakmap's six addons and gives
mitmproxy one addon instead: for each hook that some of them have, an
attribute of that name, made once.  A hook only one of them has is that
addon's own bound method.  A hook several have calls them in their order, as
mitmproxy's walk would: when one returns an awaitable, the rest run after it
completes; an exception stops the rest, as it does under mitmproxy's walk.
mitmproxy calls ``done`` without awaiting it when it reloads a changed
script: what ``done`` returns is scheduled as a task at once, so it runs
then too (:func:`scheduled`).

**Deferred hooks.**  What leakmap does when a response is in (take the
flow's state for the capture, make its exchange, hand both to their
processes) does not change what the phone gets, so it need not run between
mitmproxy's steps for that request.  A deferred hook (``response``) only
puts the flow in a batch; the batch is handled every ``BATCH_S`` (or at
``BATCH_MAX`` flows), each flow in turn, in the order they came.  Same
instructions; in two A/Bs on 2 KB requests with 16 connections the proxy's
event loop used 2.5–6.6 % more CPU per request than bare mitmdump's with
batching, 11–15 % without (docs/performance.md; later runs were noisier).
The likely reason, not measured here (no hardware counters): leakmap's code
interleaved with mitmproxy's request by request runs at a lower rate of
instructions per cycle than the same code run together.

So that no hook of a flow overtakes its deferred ``response``, the batch is
handled first before any other hook of leakmap's, except the ones that
start a flow (``request``, ``tcp_start``...).  While ``defer_while()`` is
false (the Inspector makes ``response`` wait for the analysis when flows are
saved with ``-w``), deferred hooks run at once.  A flow's handling that
raises is logged and the batch goes on with the next.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

# The modules that define mitmproxy's hooks: importing them fills hooks.all_hooks.
import mitmproxy.addonmanager
import mitmproxy.log
import mitmproxy.proxy.layers.modes
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import hooks
from mitmproxy.proxy.layers import dns, http, quic, tcp, tls, udp, websocket  # noqa: F401

log = logging.getLogger(__name__)

Handler = Callable[..., Any]

BATCH_S = 0.02  # a deferred flow waits at most this long
BATCH_MAX = 256  # or until this many wait
# hooks that start a flow: no deferred hook of that flow can be waiting
STARTS = frozenset({"request", "requestheaders", "tcp_start", "udp_start", "dns_request",
                    "http_connect", "client_connected"})


class Leakmap:
    """One addon for mitmproxy that stands for ``parts``, in their order; the hooks named in
    ``deferred`` are handled in batches while ``defer_while()`` holds."""

    def __init__(self, *parts: object, deferred: Collection[str] = (),
                 defer_while: Callable[[], bool] = lambda: True) -> None:
        self.parts = parts
        self.deferred, self.defer_while = frozenset(deferred), defer_while
        self.batch: list[tuple[Handler, tuple[Any, ...]]] = []
        self.timer: asyncio.TimerHandle | None = None
        # awaitables a batched hook returned (not "running": that is a hook's name)
        self.tasks: set[asyncio.Future[Any]] = set()
        self.hooks: dict[str, Handler] = {}  # each hook made, by name (the attributes set)
        for name in hook_names():
            handlers = [handler for part in parts
                        if callable(handler := getattr(part, name, None))]
            if not handlers:
                continue
            hook = handlers[0] if len(handlers) == 1 else in_order(handlers)
            if name in deferred:
                hook = self._deferring(hook)
            elif name not in STARTS:
                hook = self._after_batch(hook)
            if name == "done":  # the one hook of leakmap's that returns an awaitable
                hook = scheduled(hook)
            setattr(self, name, hook)
            self.hooks[name] = hook

    def _deferring(self, hook: Handler) -> Handler:
        at_once = self._after_batch(hook)

        def defer(*args: Any) -> Any:
            if not self.defer_while():
                return at_once(*args)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside mitmproxy's loop: nothing to batch on
                return hook(*args)
            self.batch.append((hook, args))
            if len(self.batch) >= BATCH_MAX:
                self.handle_batch()
            elif self.timer is None:
                self.timer = loop.call_later(BATCH_S, self.handle_batch)
            return None

        return defer

    def _after_batch(self, hook: Handler) -> Handler:
        def after_batch(*args: Any) -> Any:
            if self.batch:
                self.handle_batch()
            return hook(*args)

        return after_batch

    def handle_batch(self) -> None:
        """Run the deferred hooks now, in the order they came."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.batch = self.batch, []
        for hook, args in batch:
            try:
                result = hook(*args)
            except Exception:  # as mitmproxy would: said, and the next flow goes on
                log.exception("leakmap: a deferred hook failed")
                continue
            if result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)


def hook_names() -> list[str]:
    """Every hook mitmproxy may call on an addon."""
    return sorted(hooks.all_hooks)


# ``done`` tasks of leakmap addons still closing their runs, whoever made them: a reloaded
# script's old addons close theirs while the new ones run
_CLOSING: set[asyncio.Future[Any]] = set()


def scheduled(hook: Handler) -> Handler:
    """The ``done`` hook ``hook``, with an awaitable it returns already scheduled on the
    running loop: a task.

    mitmproxy awaits the task as it would the awaitable.  Where it calls the hook
    without awaiting (``AddonManager.invoke_addon_sync``, when a changed script is
    reloaded), the task still runs: the old run is closed, its flows written.  The
    task also waits for the ``done`` tasks started before it, so that the proxy's
    own stop waits for an old run still closing (mitmproxy cancels every task left
    when its loop ends).  mitmproxy calls ``configure`` and ``running`` unawaited
    too, when it loads a script: leakmap's are synchronous, and must stay so.
    """
    def schedule(*args: Any) -> Any:
        result = hook(*args)
        if result is None or not inspect.isawaitable(result):
            return result
        loop = asyncio.get_running_loop()  # mitmproxy calls hooks on its loop
        earlier = [task for task in _CLOSING if task.get_loop() is loop]
        task = asyncio.ensure_future(_after_earlier(result, earlier))
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)
        return task

    return schedule


async def _after_earlier(pending: Awaitable[Any], earlier: Sequence[asyncio.Future[Any]]) -> Any:
    try:
        return await pending
    finally:  # their failures were theirs to report
        await asyncio.gather(*earlier, return_exceptions=True)


def in_order(handlers: Sequence[Handler]) -> Handler:
    """One hook that calls ``handlers`` in order, each after the awaitable the one before
    it returned (if any) has completed; it returns an awaitable only if one of them does."""

    def handle(*args: Any) -> Awaitable[None] | None:
        for index, handler in enumerate(handlers):
            result = handler(*args)
            if result is not None and inspect.isawaitable(result):
                return _after(result, handlers[index + 1 :], args)
        return None

    return handle


async def _after(pending: Awaitable[Any], handlers: Sequence[Handler], args: tuple[Any, ...]) -> None:
    await pending
    for handler in handlers:
        result = handler(*args)
        if result is not None and inspect.isawaitable(result):
            await result
