"""A policy that acts, live: block, redact, alert through the real proxy, and hot reload."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import ssl
from pathlib import Path

import httpx
import pytest
from mitmproxy import io

from leakmap.policies.model import default_policy_path

from conftest import leakmap_cli
from servers import TLSServer

IMEI = "865312345678901"  # samples/redmi-1s.yaml
OTHER_IMEI = "490154203237518"  # Luhn-valid too
IMEI_SHA256 = hashlib.sha256(IMEI.encode()).hexdigest()
BLOCKED_BY = "actions[1] advisory identifiers to China"


@pytest.fixture
def watched_and_not(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two local servers: 127.0.0.1 placed in Beijing (watched), 127.0.0.2 in Mumbai."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    networks = tmp_path / "networks.yaml"
    networks.write_text("- {cidr: 127.0.0.1/32, country: CN, asn: 4808, as_org: China Unicom}\n"
                        "- {cidr: 127.0.0.2/32, country: IN, asn: 55836, as_org: Reliance Jio}\n")
    with TLSServer(tmp_path / "a") as china, TLSServer(tmp_path / "b", host="127.0.0.2") as india:
        yield china, india, networks


def _client(proxy) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca)),
                        timeout=20)


def _flows(db: str, run: str) -> list[dict]:
    return json.loads(leakmap_cli("report", "--db", db, "--run", run, "--format", "json").stdout)["flows"]


def test_strict_defence_blocks_the_imei_to_china_and_lets_it_go_elsewhere(
        start_proxy, watched_and_not, tmp_path: Path, device_file: Path) -> None:
    china, india, networks = watched_and_not
    db = f"sqlite:///{tmp_path / 'strict.db'}"
    policy = default_policy_path().parent / "strict-defence.yaml"
    saved = tmp_path / "strict.flow"
    proxy = start_proxy("--policy", str(policy), "--device", str(device_file), "--db", db,
                        "--run-name", "strict", "--networks", str(networks), "--flush-ms", "200",
                        "-w", str(saved), "--workers", "1")  # the analysis process path, too
    with _client(proxy) as client:
        blocked = client.post(f"https://127.0.0.1:{china.port}/pass/register", json={"imei": IMEI})
        quiet = client.get(f"https://127.0.0.1:{china.port}/generate_204")
        alerted = client.post(f"https://127.0.0.1:{china.port}/status", json={"carrier": "Airtel"})
        elsewhere = client.post(f"https://127.0.0.2:{india.port}/pass/register", json={"imei": IMEI})
    assert blocked.status_code == 403 and BLOCKED_BY in blocked.text
    assert blocked.headers["x-leakmap-action"] == "block"
    assert quiet.status_code == 200 and elsewhere.status_code == 200 and alerted.status_code == 200
    # the IMEI never arrived
    assert [path for _, path, _ in china.received] == ["/generate_204", "/status"]
    assert [json.loads(body) for _, _, body in india.received] == [{"imei": IMEI}]
    assert proxy.stop() == 0, proxy.output
    alert = "leakmap !!! BLOCKED: imei -> 127.0.0.1 [127.0.0.1, CN [watched: server_country=CN]] by "
    assert alert + BLOCKED_BY in proxy.output
    assert "leakmap !!! ALERT: carrier -> 127.0.0.1 [127.0.0.1, CN [watched: server_country=CN]] by " \
           "actions[2]" in proxy.output
    with saved.open("rb") as handle:  # what mitmweb shows: the marks and comments
        marks = {(flow.request.host, flow.request.path): (flow.marked, flow.comment)
                 for flow in io.FlowReader(handle).stream()}
    china_marks = {path: mark for (host, path), mark in marks.items() if host == "127.0.0.1"}
    assert china_marks["/pass/register"][0] == ":no_entry:"
    assert "[block by actions[1]" in china_marks["/pass/register"][1]
    assert china_marks["/status"][0] == ":bell:" and "[alert by actions[2]" in china_marks["/status"][1]
    assert china_marks["/generate_204"][0] == ""
    assert marks[("127.0.0.2", "/pass/register")][0] == ":warning:"  # a finding, no action
    flows = {(f["server_ip"], f["url"].rsplit("/", 1)[-1]): f for f in _flows(db, "strict")}
    stopped = flows[("127.0.0.1", "register")]
    assert (stopped["action"], stopped["action_rule"], stopped["enforced"]) == ("block", BLOCKED_BY, True)
    assert stopped["status_code"] == 403 and stopped["finding_count"] >= 1
    assert flows[("127.0.0.2", "register")]["action"] == "log"
    assert flows[("127.0.0.1", "generate_204")]["action"] == "log"
    assert flows[("127.0.0.1", "status")]["action"] == "alert"
    assert len({f["policy_sha256"] for f in flows.values()}) == 1


REDACT = ("extends: default.yaml\n"
          "actions:\n"
          "  - {name: no-imei-to-china, data_types: [imei], watched: true, action: redact}\n")


def test_redact_replaces_every_written_form_and_blocks_what_it_cannot_reach(
        start_proxy, watched_and_not, tmp_path: Path, device_file: Path) -> None:
    china, _, networks = watched_and_not
    policy = tmp_path / "redact.yaml"
    policy.write_text(REDACT)
    db = f"sqlite:///{tmp_path / 'redact.db'}"
    proxy = start_proxy("--policy", str(policy), "--device", str(device_file), "--db", db,
                        "--run-name", "redact", "--networks", str(networks), "--flush-ms", "200")
    hidden = base64.b64encode(json.dumps({"imei": IMEI}).encode()).decode()  # base64 of JSON
    with _client(proxy) as client:
        sent = client.post(f"https://127.0.0.1:{china.port}/r?imei={IMEI}&n=1",
                           content=gzip.compress(json.dumps({"imei": IMEI, "note": "hi"}).encode()),
                           headers={"x-device": IMEI_SHA256, "content-encoding": "gzip",
                                    "content-type": "application/json"})
        wrapped = client.post(f"https://127.0.0.1:{china.port}/w", json={"blob": hidden})
    assert sent.status_code == 200
    assert wrapped.status_code == 403 and "redaction could not remove imei" in wrapped.text
    [(_, path, body)] = china.received  # the wrapped one never left
    assert path == "/r?imei=000000000000000&n=1"
    assert json.loads(gzip.decompress(body)) == {"imei": "000000000000000", "note": "hi"}
    assert china.headers_received[0]["x-device"] == "".join(
        "0" if ch.isdigit() else "x" for ch in IMEI_SHA256)
    assert proxy.stop() == 0, proxy.output
    flows = {f["url"].split("?")[0].rsplit("/", 1)[-1]: f for f in _flows(db, "redact")}
    assert (flows["r"]["action"], flows["r"]["enforced"]) == ("redact", True)
    assert flows["r"]["action_rule"] == "actions[1] no-imei-to-china"
    assert flows["w"]["action"] == "block" and "redaction could not remove" in flows["w"]["action_rule"]
    # the flow is recorded with what the phone tried to send, not with the placeholders
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "redact", "--format", "json").stdout)
    fields = {(f["field"], f["encoding"], f["action"]) for f in report["findings"] if f["flow_id"] ==
              flows["r"]["flow_id"]}
    assert {("request.query.imei", "plain", "redact"), ("request.headers.x-device", "sha256", "redact"),
            ("request.body.json.imei", "plain", "redact")} <= fields


def test_offline_analysis_says_what_the_proxy_would_have_done(tmp_path: Path, device_file: Path) -> None:
    policy = default_policy_path().parent / "strict-defence.yaml"
    db = f"sqlite:///{tmp_path / 'offline.db'}"
    har = Path(__file__).parent.parent / "samples" / "redmi-2014.har"
    leakmap_cli("analyze", str(har), "--policy", str(policy), "--device", str(device_file),
                "--db", db, "--run-name", "offline")
    flows = [f for f in _flows(db, "offline") if f["host"] == "api.account.xiaomi.com"]
    assert flows and all(f["action"] == "block" and not f["enforced"] for f in flows)
    table = leakmap_cli("report", "--db", db, "--run", "offline").stdout
    assert "actions:      block" in table and "(0 enforced by the proxy)" in table


def test_a_policy_edit_takes_effect_on_the_next_flow_and_a_bad_edit_keeps_the_old_one(
        start_proxy, watched_and_not, tmp_path: Path, device_file: Path) -> None:
    china, _, networks = watched_and_not
    policy = tmp_path / "live.yaml"
    policy.write_text("extends: default.yaml\n")
    db = f"sqlite:///{tmp_path / 'reload.db'}"
    proxy = start_proxy("--policy", str(policy), "--device", str(device_file), "--db", db,
                        "--run-name", "reload", "--networks", str(networks), "--flush-ms", "200")
    url = f"https://127.0.0.1:{china.port}/up"
    valid = ("extends: default.yaml\n"
             "data_types:\n"
             "  lab_token: {category: custom, severity: low, keys: {names: [lab_token]}}\n"
             "actions:\n"
             "  - {data_types: [imei], action: block}\n")
    with _client(proxy) as client:
        assert client.post(url, json={"imei": IMEI}).status_code == 200
        policy.write_text(valid)
        proxy.wait_for_output("leakmap: reloaded policy")
        assert client.post(url, json={"imei": IMEI}).status_code == 403  # the very next flow
        policy.write_text("extends: default.yaml\nactions:\n  - {data_types: [imei], action: blok}\n")
        proxy.wait_for_output("the edited configuration is not valid")
        assert client.post(url, json={"imei": IMEI}).status_code == 403  # the old policy still runs
        policy.write_text(valid + "# fixed\n")
        proxy.wait_for_output("leakmap: reloaded policy", count=2)
        device_file.write_text(device_file.read_text().replace(IMEI, OTHER_IMEI))
        proxy.wait_for_output("leakmap: reloaded policy", count=3)
        assert client.post(url, json={"x": OTHER_IMEI, "lab_token": "t-778"}).status_code == 403
    assert proxy.stop() == 0, proxy.output
    assert f"{policy.resolve()}:3:34: unknown action 'blok' (did you mean 'block'?)" in proxy.output
    assert len(china.received) == 1
    hashes = [f["policy_sha256"] for f in _flows(db, "reload")]
    assert len(hashes) == 4 and len({hashes[0], hashes[1], hashes[3]}) == 3 and hashes[1] == hashes[2]
    report = json.loads(leakmap_cli("report", "--db", db, "--run", "reload", "--format", "json").stdout)
    last = {(f["field"], f["data_type"], f["match"]) for f in report["findings"]
            if f["flow_id"] == report["flows"][-1]["flow_id"]}
    # the new profile's IMEI is a known value now; the custom type works live and in the report
    assert last == {("request.body.json.x", "imei", "known"),
                    ("request.body.json.lab_token", "lab_token", "key")}


def test_a_policy_file_is_loaded_again_only_once_it_holds_still() -> None:
    """An editor empties a file, then writes it: an empty policy is valid and has no action,
    so a look that falls in between must not load it (that dropped the block rule above)."""
    from leakmap.addons.inspector import settled_change

    loaded = [(1, 120, 7)]
    emptied, written = [(2, 0, 7)], [(3, 140, 7)]
    assert settled_change(loaded, loaded, None) == (False, None)
    assert settled_change(emptied, loaded, None) == (False, emptied)  # moved: look again
    assert settled_change(written, loaded, emptied) == (False, written)  # still moving
    assert settled_change(written, loaded, written) == (True, None)  # held still: load it
    assert settled_change(loaded, loaded, emptied) == (False, None)  # changed back


def test_a_policy_that_cannot_be_applied_fails_closed(tmp_path: Path) -> None:
    """A leakmap bug while judging a request (here: a classifier that raises) must not let
    the request leave: it gets a 502 and is recorded as blocked."""
    import asyncio

    from mitmproxy.test import taddons, tflow

    from leakmap.addons.enforcer import Enforcer
    from leakmap.addons.inspector import ENFORCED_KEY, Inspector
    from leakmap.wiring import build_pipeline

    policy = tmp_path / "block.yaml"
    policy.write_text("extends: default.yaml\nactions:\n  - {data_types: [imei], action: block}\n")
    inspector = Inspector()
    inspector.pipeline = build_pipeline(policy=str(policy), db=f"sqlite:///{tmp_path / 'k.db'}").pipeline

    def broken(_exchange: object) -> None:
        raise KeyError("a bug")

    inspector.pipeline.classifier.classify = broken  # type: ignore[method-assign, assignment]
    enforcer = Enforcer(inspector)
    flow = tflow.tflow()
    flow.request.content = json.dumps({"imei": IMEI}).encode()

    async def judged() -> None:
        with taddons.context():
            judging = enforcer.request(flow)  # mitmproxy awaits what a sync hook returns
            assert judging is not None
            await judging

    asyncio.run(judged())
    assert flow.response is not None and flow.response.status_code == 502
    assert b"did not send this request" in flow.response.content
    assert flow.metadata[ENFORCED_KEY]["action"] == "block"


def test_a_request_not_analysed_whole_does_not_leave_under_a_blocking_policy(tmp_path: Path) -> None:
    import asyncio

    from mitmproxy.test import taddons, tflow

    from leakmap.addons.enforcer import Enforcer
    from leakmap.addons.inspector import ENFORCED_KEY, Inspector
    from leakmap.wiring import build_pipeline

    policy = tmp_path / "block.yaml"
    policy.write_text("extends: default.yaml\nactions:\n  - {data_types: [imei], action: block}\n")
    inspector = Inspector()
    inspector.pipeline = build_pipeline(policy=str(policy), max_body=1000,
                                        db=f"sqlite:///{tmp_path / 'k.db'}").pipeline
    enforcer = Enforcer(inspector)
    past_the_cap = tflow.tflow()  # the IMEI sits beyond the 1,000 bytes scanned
    past_the_cap.request.content = json.dumps({"pad": "x" * 2000, "imei": IMEI}).encode()
    small = tflow.tflow()
    small.request.content = b'{"note": "nothing"}'

    async def judged() -> None:
        with taddons.context():
            for flow in (past_the_cap, small):
                judging = enforcer.request(flow)
                assert judging is not None
                await judging

    asyncio.run(judged())
    assert past_the_cap.response is not None and past_the_cap.response.status_code == 502
    assert past_the_cap.metadata[ENFORCED_KEY]["rule"] == "not analysed whole"
    assert small.response is None  # analysed whole, nothing covered: it goes on


def test_a_request_whose_server_does_not_resolve_does_not_leave_if_a_rule_could_block_it(
        tmp_path: Path) -> None:
    """Where a request goes decides a country rule; a name that does not resolve leaves that
    unknown, so a request carrying what such a rule blocks is refused (502), not waved on."""
    import asyncio

    from mitmproxy.test import taddons, tflow

    from leakmap.addons.enforcer import Enforcer
    from leakmap.addons.inspector import ENFORCED_KEY, Inspector
    from leakmap.wiring import build_pipeline

    policy = tmp_path / "block.yaml"
    policy.write_text("extends: default.yaml\n"
                      "actions:\n  - {data_types: [imei], countries: [CN], action: block}\n")
    inspector = Inspector()
    inspector.pipeline = build_pipeline(policy=str(policy),
                                        db=f"sqlite:///{tmp_path / 'k.db'}").pipeline
    enforcer = Enforcer(inspector)

    def unresolvable(body: bytes) -> object:
        flow = tflow.tflow()
        flow.request.host = "leakmap-test.invalid"  # never resolves (RFC 6761)
        flow.server_conn.address = ("leakmap-test.invalid", 443)
        flow.server_conn.peername = None
        flow.request.content = body
        return flow

    carrying, harmless = unresolvable(json.dumps({"imei": IMEI}).encode()), unresolvable(b"{}")

    async def judged() -> None:
        with taddons.context():
            for flow in (carrying, harmless):
                judging = enforcer.request(flow)  # type: ignore[arg-type]
                assert judging is not None
                await judging

    asyncio.run(judged())
    assert carrying.response is not None and carrying.response.status_code == 502  # type: ignore[attr-defined]
    assert b"did not resolve" in carrying.response.content  # type: ignore[attr-defined]
    assert carrying.metadata[ENFORCED_KEY]["rule"] == "destination unknown"  # type: ignore[attr-defined]
    assert harmless.response is None  # type: ignore[attr-defined]  # nothing a rule takes: it goes on


def test_a_name_that_does_not_resolve_is_judged_by_the_rules_that_could_apply_there() -> None:
    """Only what some destination could make block or redact is refused: a host rule that
    logs the data first still decides, the host being known."""
    from types import SimpleNamespace

    from leakmap.core.actions import Place, acts_somewhere
    from leakmap.policies.model import ActionRule

    rules = [ActionRule("log", 1, data_types=("email",), hosts=("*.mycorp.invalid",)),
             ActionRule("block", 2, data_types=("email",), hosts=("*.tracker.invalid",)),
             ActionRule("block", 3, data_types=("imei",), countries=("CN",))]
    email = [SimpleNamespace(data_type="email", category="contact")]
    imei = [SimpleNamespace(data_type="imei", category="device")]
    assert not acts_somewhere(rules, email, Place(host="api.mycorp.invalid"))
    assert acts_somewhere(rules, email, Place(host="x.tracker.invalid"))
    assert acts_somewhere(rules, imei, Place(host="api.mycorp.invalid"))  # it could be in CN
    assert not acts_somewhere(rules[:2], imei, Place(host="x.tracker.invalid"))

