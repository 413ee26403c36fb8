"""leakmap's addons as one mitmproxy addon (addons/dispatch.py): the same calls, in the same
order, as mitmproxy's own walk over the six would make.  The live tests run the real thing."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pytest
from mitmproxy import hooks

from leakmap.addons import dispatch
from leakmap.addons.dispatch import Leakmap


class Part:
    def __init__(self, name: str, calls: list[str], waits: bool = False) -> None:
        self.name, self.calls, self.waits = name, calls, waits

    def request(self, flow: object) -> Any:
        self.calls.append(f"{self.name} request {flow}")
        return self._later(flow) if self.waits else None

    async def _later(self, flow: object) -> None:
        await asyncio.sleep(0.01)
        self.calls.append(f"{self.name} waited {flow}")


class Ends:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def response(self, flow: object) -> None:
        self.calls.append(f"response {flow}")

    def error(self, flow: object) -> None:
        self.calls.append(f"error {flow}")

    async def done(self) -> None:
        self.calls.append("done")


def test_a_hook_that_starts_a_flow_and_one_part_has_is_that_parts_own_method() -> None:
    part = Part("a", [])
    one = Leakmap(part, Ends([]))
    assert one.request == part.request  # type: ignore[attr-defined]


def test_hooks_no_part_has_are_absent() -> None:
    one = Leakmap(Part("a", []), Part("b", []))
    assert not hasattr(one, "response") and not hasattr(one, "tcp_message")
    assert hasattr(one, "request")


def test_parts_are_called_in_order_without_an_awaitable_when_none_returns_one() -> None:
    calls: list[str] = []
    one = Leakmap(Part("a", calls), Part("b", calls), Part("c", calls))
    assert one.request("f1") is None  # type: ignore[attr-defined]
    assert calls == ["a request f1", "b request f1", "c request f1"]


def test_the_parts_after_an_awaitable_run_once_it_completed() -> None:
    calls: list[str] = []
    one = Leakmap(Part("a", calls), Part("b", calls, waits=True), Part("c", calls))
    pending = one.request("f1")  # type: ignore[attr-defined]
    assert calls == ["a request f1", "b request f1"]  # c waits for b, as under mitmproxy
    asyncio.run(pending)
    assert calls == ["a request f1", "b request f1", "b waited f1", "c request f1"]


def test_an_exception_stops_the_parts_after_it() -> None:
    calls: list[str] = []

    class Broken:
        def request(self, flow: object) -> None:
            raise RuntimeError("bug")

    one = Leakmap(Part("a", calls), Broken(), Part("c", calls))
    with pytest.raises(RuntimeError):
        one.request("f1")  # type: ignore[attr-defined]
    assert calls == ["a request f1"]


def test_every_hook_mitmproxy_knows_is_looked_for() -> None:
    names = set(dispatch.hook_names())
    assert {"load", "configure", "running", "done", "request", "response", "error",
            "tls_failed_client", "tcp_start", "udp_end", "dns_response", "websocket_end",
            "http_connect_error"} <= names
    assert names == set(hooks.all_hooks)


def test_the_script_gives_mitmproxy_one_addon_with_every_hook_of_the_six() -> None:
    """The script's module is that addon: it carries the one addon's hooks itself, and no
    ``addons`` list for mitmproxy to walk again on every event."""
    from leakmap.cli.main import addon_script_path

    spec = importlib.util.spec_from_file_location("leakmap_script", addon_script_path())
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    one = script.leakmap
    assert [type(part).__name__ for part in one.parts] == [
        "Inspector", "Enforcer", "Review", "Recorder", "ScenarioWalk", "Capture"]
    assert not hasattr(script, "addons")
    for name in dispatch.hook_names():
        has = [part for part in one.parts if callable(getattr(part, name, None))]
        assert hasattr(one, name) == bool(has), name
        assert (getattr(script, name, None) is getattr(one, name, None)) or not has, name
        assert hasattr(script, name) == bool(has), name


def test_deferred_responses_are_handled_together_in_order_after_the_batch_time() -> None:
    calls: list[str] = []
    one = Leakmap(Part("a", calls), Ends(calls), deferred={"response"})

    async def traffic() -> None:
        for n in range(3):
            one.request(n)  # type: ignore[attr-defined]  # a start: never waits for the batch
            assert one.response(n) is None  # type: ignore[attr-defined]
        assert calls == ["a request 0", "a request 1", "a request 2"]
        await asyncio.sleep(dispatch.BATCH_S * 3)
        assert calls[3:] == ["response 0", "response 1", "response 2"]

    asyncio.run(traffic())


def test_another_hook_of_leakmap_runs_after_the_deferred_responses() -> None:
    calls: list[str] = []
    one = Leakmap(Ends(calls), deferred={"response"})

    async def traffic() -> None:
        one.response("f1")  # type: ignore[attr-defined]
        one.error("f1")  # type: ignore[attr-defined]  # the same flow's error: after its response
        await one.done()  # type: ignore[attr-defined]

    asyncio.run(traffic())
    assert calls == ["response f1", "error f1", "done"]


def test_a_full_batch_is_handled_at_once() -> None:
    calls: list[str] = []
    one = Leakmap(Ends(calls), deferred={"response"})

    async def traffic() -> None:
        for n in range(dispatch.BATCH_MAX):
            one.response(n)  # type: ignore[attr-defined]
        assert len(calls) == dispatch.BATCH_MAX and one.timer is None

    asyncio.run(traffic())


def test_while_not_deferring_a_response_runs_at_once_and_may_be_awaited() -> None:
    calls: list[str] = []
    deferring = [True]
    one = Leakmap(Part("a", calls, waits=True), deferred={"request"},
                  defer_while=lambda: deferring[0])

    async def traffic() -> None:
        assert one.request("f1") is None  # type: ignore[attr-defined]
        deferring[0] = False
        pending = one.request("f2")  # type: ignore[attr-defined]  # f1 first, then f2, awaited
        assert calls == ["a request f1", "a request f2"]
        await pending
        assert "a waited f2" in calls

    asyncio.run(traffic())


def test_a_deferred_hook_that_raises_costs_only_its_own_flow(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Picky:
        def response(self, flow: object) -> None:
            if flow == "bad":
                raise RuntimeError("bug")
            calls.append(f"response {flow}")

    one = Leakmap(Picky(), deferred={"response"})

    async def traffic() -> None:
        for flow in ("f1", "bad", "f2"):
            one.response(flow)  # type: ignore[attr-defined]
        await asyncio.sleep(dispatch.BATCH_S * 3)

    asyncio.run(traffic())
    assert calls == ["response f1", "response f2"]
    assert "a deferred hook failed" in caplog.text


def test_an_awaitable_a_batched_hook_returns_is_run_and_no_attribute_hides_a_hook() -> None:
    calls: list[str] = []

    class Starts(Part):
        def running(self) -> None:
            calls.append("running")

    one = Leakmap(Starts("a", calls, waits=True), deferred={"request"})

    async def traffic() -> None:
        one.running()  # type: ignore[attr-defined]
        one.request("f1")  # type: ignore[attr-defined]
        await asyncio.sleep(dispatch.BATCH_S * 5)

    asyncio.run(traffic())
    assert calls == ["running", "a request f1", "a waited f1"]
    hooks_of_one = set(vars(one)) & set(dispatch.hook_names())
    assert all(callable(getattr(one, name)) for name in hooks_of_one)
