"""Recorder: writes every inspected flow to the store, off the event loop.

Opens the database and starts a run when the proxy is running, hands each
record the Inspector hands over to a :class:`~leakmap.store.writer.FlowWriter` (a batching worker thread),
and on shutdown drains it and closes the run.  A database that cannot be
opened stops the proxy with one line instead of letting traffic through
unrecorded.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.flow import Flow
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

import leakmap
from leakmap.addons import options
from leakmap.addons.inspector import STORED_KEY, Inspector, flow_record, refuse, tls_records
from leakmap.core.device import load_device
from leakmap.core.pipeline import FlowRecord
from leakmap.core.yamlsource import ConfigError
from leakmap.policies.model import load_policy
from leakmap.store.db import StoreError, default_db_url, finish_run, open_store, start_run
from leakmap.store.writer import FlowWriter, replay_leftovers, spill_folder
from leakmap.wiring import geodb_summary, judged_with

log = logging.getLogger(__name__)


def default_run_name(command: str) -> str:
    """The command and the UTC time, to the millisecond: ``run-2026-11-22T23:05:38.530Z``."""
    return f"{command}-{datetime.now(tz=UTC).isoformat(timespec='milliseconds')[:-6]}Z"


class Recorder:
    def __init__(self, inspector: Inspector | None = None) -> None:
        # the Inspector whose policy, profile and geodb the run records (loaded again without one)
        self.inspector = inspector
        self.engine: Engine | None = None
        self.writer: FlowWriter | None = None
        self.run_id: int | None = None
        self.run_name: str | None = None
        # records analysed before the run started (the port listens a moment before
        # ``running`` reaches this addon); written as soon as it has
        self.before_run: list[FlowRecord] = []
        self.stop_on_failure = True  # --on-store-failure=stop

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        options.declare(loader, ("db", "run_name", "flush_ms", "on_store_failure"))

    def configure(self, updated: set[str]) -> None:
        self.stop_on_failure = ctx.options.leakmap_on_store_failure == "stop"  # read per request
        if ctx.options.leakmap_on_store_failure not in STORE_FAILURE_MODES:
            raise exceptions.OptionsError(
                f"leakmap_on_store_failure: {ctx.options.leakmap_on_store_failure!r} is not one of "
                f"{', '.join(STORE_FAILURE_MODES)}")
        if "leakmap_db" in updated or self.engine is None:
            if self.writer is not None:
                raise exceptions.OptionsError("leakmap_db cannot change while a run is recording")
            try:
                self.engine = open_store(ctx.options.leakmap_db or None)
            except StoreError as e:
                refuse(str(e), starting=self.engine is None)

    def running(self) -> None:
        if self.engine is None or self.writer is not None:
            return
        opts = ctx.options
        try:
            assembled = self.inspector.assembled if self.inspector is not None else None
            settings = None
            if assembled is not None:
                policy, device, geodb = assembled.policy, assembled.device, geodb_summary(assembled)
                settings = judged_with(assembled, opts.leakmap_geoip_dir, opts.leakmap_networks)
            else:
                policy = load_policy(opts.leakmap_policy or None)
                device = load_device(opts.leakmap_device or None)
                geodb = None
            self.run_name = opts.leakmap_run_name or default_run_name("live")
            self.run_id = start_run(
                self.engine,
                name=self.run_name,
                command_name="run",
                tool_version=leakmap.__version__,
                policy_name=policy.name,
                policy_sha256=policy.sha256,
                device_sha256=device.sha256,
                device=device.label,
                mode=",".join(opts.mode),
                geodb=geodb,
                store_raw=bool(getattr(opts, "leakmap_store_raw", False)),
                settings=settings,
            )
            replay_leftovers(self.engine, opts.leakmap_db or default_db_url())
        except (ConfigError, StoreError, SQLAlchemyError, OSError) as e:  # OSError: a spill
            log.error("leakmap: %s", e)
            self.engine = None  # no run: nothing more is kept for one
            self.before_run.clear()
            ctx.master.shutdown()
            return
        interval = max(opts.leakmap_flush_ms, 10) / 1000
        self.writer = FlowWriter(self.engine, self.run_id, interval=interval)
        if self.inspector is not None:  # its analysis process writes what it analyses
            self.inspector.store_in_worker(
                {"db": opts.leakmap_db or default_db_url(), "run_id": self.run_id,
                 "interval": interval}, self._orphaned)
        for record in self.before_run:
            self.writer.submit(record)
        self.before_run.clear()

    def record(self, flow: Flow) -> None:
        """Store a flow the Inspector has analysed (each flow once per session)."""
        if self.engine is None:
            return
        summary = flow.metadata.get("leakmap") or {}
        session = summary.get("session")
        if flow.metadata.get("leakmap_recorded") == session:
            return
        if summary.get(STORED_KEY):  # the analysis process wrote it
            flow.metadata["leakmap_recorded"] = session
            return
        record = flow_record(flow)
        if record is None:
            return
        flow.metadata["leakmap_recorded"] = session
        if self.writer is not None:
            self.writer.submit(record)
        elif self.run_id is None:  # not started yet: kept until it is
            self.before_run.append(record)

    def _orphaned(self, records: list[FlowRecord]) -> None:
        """Records the analysis process stored but had not committed when it died or was
        given up on: written here (a record written twice replaces itself)."""
        if self.writer is not None:
            for record in records:
                self.writer.submit(record)

    def store_failing(self) -> tuple[str, str] | None:
        """While flows cannot be written to the database: why, and the spill file they go to."""
        writer = self.writer
        if writer is None:
            return None
        if writer.failing:
            return writer.last_error or "?", str(writer.spill.path)
        return self.inspector.store_failing() if self.inspector is not None else None

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.stop_on_failure:
            return
        failing = self.store_failing()
        if failing is not None:
            flow.response = http.Response.make(502, refusal(*failing), {"content-type": "text/plain"})

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if self.writer is not None:
            for record in tls_records(data):
                self.writer.submit(record)
        elif self.engine is not None and self.run_id is None:
            self.before_run.extend(tls_records(data))

    async def done(self) -> None:
        # The Inspector's done() (it comes first) has handed over the flows still open;
        # an analysis that a late hook started since is waited for too.
        left_by_workers: int | None = 0
        if self.inspector is not None:
            await self.inspector.settle()
            left_by_workers = await self.inspector.close_workers()  # their orphans come here
        if self.writer is not None and self.engine is not None and self.run_id is not None:
            spilled = self.writer.close()
            complete = not spilled and (left_by_workers == 0 or (
                left_by_workers is None and self._spills_replayed()))
            try:
                finish_run(self.engine, self.run_id, "completed" if complete else "incomplete")
            except SQLAlchemyError as e:  # the next run marks it aborted and replays the spill
                log.error("leakmap: run not closed in the database: %s", e)
            log.info("leakmap: run closed, %d flows written", self.writer.written)
            self.writer = None


    def _spills_replayed(self) -> bool:
        """After an analysis process ended without saying what it left: replay the spill
        files it may have left; whether none of this run's is left."""
        url = ctx.options.leakmap_db or default_db_url()
        try:
            replay_leftovers(self.engine, url)  # type: ignore[arg-type]
        except (SQLAlchemyError, OSError) as e:
            log.error("leakmap: spill files not replayed: %s", e)
        return not any(spill_folder(url).glob(f"run-{self.run_id}.*.jsonl"))


STORE_FAILURE_MODES = options.BY_NAME["on_store_failure"].choices


def refusal(why: str, spill: str) -> bytes:
    """The body of the 502 a request gets while the store is away (stop mode)."""
    return (
        "leakmap: the request was not forwarded because the flow database cannot be written "
        f"({why}). Flows already seen are kept in {spill} and are "
        "written when the database answers again; forwarding then resumes by itself. "
        "Run with --on-store-failure=continue to let traffic through meanwhile.\n"
    ).encode()
