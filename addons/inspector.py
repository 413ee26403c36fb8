"""Inspector: classifies each finished flow and leaves the result in its metadata.

Analysis runs in a child process (``addons/analysis_worker.py``; the
``workers`` setting, on by default where there are two cores) or on a worker
thread (``asyncio.to_thread``), so a large body never blocks the event loop,
and the hook does not wait for it: the response goes on to the phone at once,
and when the analysis is done the Inspector hands the flow to its listeners
(Review, Recorder).  Only when flows are
saved (``mitmdump -w``) does the hook wait, so that the saved flow carries
its result and marks.  The result goes to ``flow.metadata["leakmap"]`` as
plain data; :func:`flow_record` gives it back as a
:class:`~leakmap.core.pipeline.FlowRecord`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions, http, tls
from mitmproxy.flow import Flow

from leakmap.addons import options
from leakmap.addons.analysis_worker import AnalysisWorker, Answer, WorkerBroken, wanted
from leakmap.addons.flows import (
    STILL_OPEN,
    OpenFlows,
    exchange_from_flow,
    exchange_from_tls_failure,
)
from leakmap.addons.handover import ANSWER_ALL, ENFORCED_KEY, StateFeed
from leakmap.core.exchange import Exchange
from leakmap.core.pipeline import (
    FlowRecord,
    Pipeline,
    mark_enforced,
    record_from_summary,
    record_summary,
)
from leakmap.core.yamlsource import ConfigError
from leakmap.wiring import Assembled, build_pipeline, stale_warnings

log = logging.getLogger(__name__)

METADATA_KEY = "leakmap"
ORIGINAL_ATTRIBUTE = "_leakmap_as_sent"  # the request's Exchange before the Enforcer redacted it
PIPELINE_SETTINGS = ("policy", "device", "geoip_dir", "geodb_max_age", "networks", "store_raw",
                     "hash_key_file", "max_body", "analysis_budget_ms")


Listener = Callable[[Flow], None]
# a record (on a thread), or its summary as the analysis process made it, and whether that
# process also stored it (AnalysisWorker.store)
Analysed = tuple[FlowRecord | None, dict[str, Any] | None, bool]
Stamps = list[tuple[int, int, int] | None]  # of the watched files (file_stamps)
STORED_KEY = "stored"  # in a summary: the analysis process wrote the record to the run's store


class Inspector:
    def __init__(self, listeners: list[Listener] | None = None,
                 feed: StateFeed | None = None) -> None:
        # called with each flow once its analysis is in its metadata
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self.pipeline: Pipeline | None = None
        self.assembled: Assembled | None = None  # policy, profile and geodb behind the pipeline
        # Marks results of this process: a replayed flow keeps an older run's
        # metadata, which must not stop it from being analysed again.
        self.session = uuid.uuid4().hex
        self.open_flows = OpenFlows()
        self.in_flight: set[asyncio.Future[Any]] = set()  # analyses under way (settle waits)
        self.worker: AnalysisWorker | None = None
        self.retired: list[AnalysisWorker] = []  # closed workers, until their writers are done
        # records left in the spill files of retired workers that have ended and were let go
        self.left_by_ended: int | None = 0
        self.store: dict[str, Any] | None = None  # where workers store flows (Recorder's run)
        self.orphaned: Callable[[list[FlowRecord]], None] | None = None  # what they could not
        self.worker_announced = False
        self.settings: dict[str, Any] = {}  # what the pipeline was built from
        self.stamps: Stamps = []  # of the watched files, when built
        self.watcher: asyncio.Task[None] | None = None  # hot reload (_watch_files)
        self.saving = False  # flows are saved (mitmdump -w): hooks wait for their analysis
        # takes each flow's state once for the analysis process and the capture (shared with
        # the Capture addon by the script)
        self.feed = feed if feed is not None else StateFeed()
        # what the listeners need answered of a flow the analysis process stored (the
        # handover's ANSWER_* marks; Review's, set by the script)
        self.answers_wanted: Callable[[], int] = lambda: ANSWER_ALL

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        options.declare(loader, (*PIPELINE_SETTINGS, "workers"))

    def configure(self, updated: set[str]) -> None:
        # read here, not per flow: an option's value costs a Python __getattr__ each time
        self.saving = bool(ctx.options.save_stream_file)
        watched = {f"leakmap_{name}" for name in (*PIPELINE_SETTINGS, "workers")} | {"leakmap_db"}
        if self.pipeline is not None and not updated & watched:
            return
        opts = ctx.options
        settings = {
            "policy": opts.leakmap_policy,
            "device": opts.leakmap_device,
            "db": getattr(opts, "leakmap_db", ""),
            "geoip_dir": opts.leakmap_geoip_dir,
            "networks": opts.leakmap_networks,
            "hash_key_file": opts.leakmap_hash_key_file,
            "store_raw": opts.leakmap_store_raw,
            "max_body": opts.leakmap_max_body,
            "analysis_budget_ms": opts.leakmap_analysis_budget_ms,
        }
        try:
            assembled = build_pipeline(**settings)
        except ConfigError as e:
            refuse(str(e), starting=self.pipeline is None)
            return
        self._use(assembled, settings)
        for warning in stale_warnings(assembled.resolver, opts.leakmap_geodb_max_age):
            log.warning("leakmap: %s", warning)

    def _use(self, assembled: Assembled, settings: dict[str, Any]) -> None:
        """Analyse with ``assembled`` from now on; flows under way finish with the old one."""
        if self.assembled is not None:
            self.assembled.resolver.close()  # analyses under way keep the scope-only answers
        self.assembled, self.pipeline, self.settings = assembled, assembled.pipeline, settings
        self.stamps = file_stamps(self._watched_files())
        self._start_worker(settings if wanted(ctx.options.leakmap_workers) else None)

    def _watched_files(self) -> list[Path]:
        """The policy and what it extends, the device profile, the networks file."""
        files = list(self.assembled.policy.files) if self.assembled is not None else []
        files += [Path(self.settings[name]) for name in ("device", "networks") if self.settings.get(name)]
        return files

    async def _watch_files(self) -> None:
        """Hot reload: a changed policy, profile or networks file is loaded again within a
        second; an invalid one is reported and the running policy kept.

        A change is loaded once the files have held still for one look: an editor (or
        ``write_text``) empties a file before it writes it, and an empty policy is a valid
        one, without a single action: read in between, it would drop every block rule."""
        changing: Stamps | None = None  # a change seen at the last look
        while True:
            await asyncio.sleep(RELOAD_POLL_SECONDS)
            if self.assembled is None:
                continue
            stamps = file_stamps(self._watched_files())
            load, changing = settled_change(stamps, self.stamps, changing)
            if load:
                self.stamps = stamps  # tried once per change, whatever comes of it
                await self._reload(dict(self.settings))

    async def _reload(self, settings: dict[str, Any]) -> None:
        try:
            assembled = await asyncio.to_thread(build_pipeline, **settings)
        except ConfigError as e:
            problems = str(e).splitlines()
            log.error("leakmap: the edited configuration is not valid; still running policy %s "
                      "(sha256 %s):\n%s", self.assembled.policy.name if self.assembled else "?",
                      self.assembled.policy.sha256[:12] if self.assembled else "?",
                      "\n".join(f"  {line}" for line in problems))
            return
        except Exception as e:  # e.g. the file vanished between two looks: keep what runs
            log.error("leakmap: could not reload (%s: %s); the running policy stays",
                      type(e).__name__, e)
            return
        self._use(assembled, settings)
        log.warning("leakmap: reloaded policy %s (sha256 %s) and device profile; the next flows "
                    "are judged by it", assembled.policy.name, assembled.policy.sha256[:12])

    def _start_worker(self, settings: dict[str, object] | None) -> None:
        """A fresh analysis process for ``settings`` (None: analyse on threads)."""
        if self.worker is not None:
            self._retire(self.worker)  # it finishes the flows it was given
        self.worker = None
        if settings is not None and self.pipeline is not None:
            self.worker = AnalysisWorker(settings, self.pipeline.classifier.limits.max_body_bytes,
                                         self._exchange_of, self._remake)
            self.feed.readers.append(self.worker)
        if self.worker is not None and self.store is not None and self.orphaned is not None:
            self.worker.store(self.store, self.orphaned)

    def store_in_worker(self, store: dict[str, Any],
                        orphaned: Callable[[list[FlowRecord]], None]) -> None:
        """Have the analysis process also write what it analyses, to the run ``store`` names
        (``{db, run_id, interval}``): the Recorder's run, once it has started.  The proxy's
        process then neither builds nor writes those rows (summaries say ``stored``).
        Records a process stored but had not committed when it died go to ``orphaned``."""
        self.store, self.orphaned = store, orphaned
        if self.worker is not None:
            self.worker.store(store, orphaned)

    def store_failing(self) -> tuple[str, str] | None:
        """While an analysis process cannot write the store: why, and its spill file."""
        for worker in (self.worker, *self.retired):
            if worker is not None and worker.store_failing is not None:
                return worker.store_failing
        return None

    def _retire(self, worker: AnalysisWorker) -> None:
        if worker in self.feed.readers:  # the flows given to it go to it first
            self.feed.flush()
            self.feed.readers.remove(worker)
        worker.close()
        if worker not in self.retired:
            self.retired.append(worker)
        self._let_go_of_ended()

    def _let_go_of_ended(self) -> None:
        """Forget the retired workers whose processes have ended, keeping what
        :meth:`close_workers` reports of them: each policy reload retires one."""
        for worker in [worker for worker in self.retired if worker.ended]:
            self.retired.remove(worker)
            self.left_by_ended = _left_in_spill(self.left_by_ended, worker, worker.stored_by_now())

    async def close_workers(self, timeout: float = 60.0) -> int | None:
        """Close the analysis processes and wait for their writers: the records left in
        their spill files, None if one ended without saying (its spill is replayed later)."""
        if self.worker is not None:
            self._retire(self.worker)
            self.worker = None
        # all at once: a stop waits at most ``timeout``, however many reloads retired a process
        all_counts = await asyncio.gather(*(worker.stored(timeout) for worker in self.retired))
        left = self.left_by_ended
        for worker, counts in zip(self.retired, all_counts, strict=True):
            left = _left_in_spill(left, worker, counts)
        self.retired.clear()
        self.left_by_ended = 0
        return left

    def _pending(self, flow: Flow) -> bool:
        previous = flow.metadata.get(METADATA_KEY)
        self.open_flows.discard(flow)
        return self.pipeline is not None and not (
            previous and previous.get("session") == self.session
        )

    def _keep(self, flow: Flow, analysed: FlowRecord | Exchange | None,
              summary: dict[str, Any] | None = None, stored: bool = False) -> None:
        """The analysis of ``flow``: its record, or its exchange (None: handed over as its
        state, made again if needed) and ``summary`` as the analysis process made it (with what
        the Enforcer did); the summary goes to the metadata, the record is made when a listener
        asks for it (:func:`flow_record`).  ``stored``: that process also wrote it to the run's
        store."""
        record = analysed if isinstance(analysed, FlowRecord) else None
        if summary is None:
            assert record is not None
            mark_enforced(record, flow.metadata.get(ENFORCED_KEY))
            summary = record_summary(record)
        summary["session"] = self.session
        summary[STORED_KEY] = stored
        flow.metadata[METADATA_KEY] = summary
        # the live objects for Review and Recorder; flow files keep only the summary.  A flow
        # handed over as its state has its exchange made only if a listener needs the record
        exchange = record.exchange if record is not None else analysed or self._exchange_of
        flow._leakmap_record = [summary, record, exchange]  # type: ignore[attr-defined]

    def running(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.get_running_loop().create_task(self._watch_files())
        # Start-up leaves a large heap (mitmproxy, SQLAlchemy, the automaton) that
        # every full collection would walk again, pausing all traffic for ~100 ms
        # (docs/benchmarks.md). Freeze it: only objects made per flow get collected.
        gc.freeze()

    def _inspect(self, flow: Flow) -> Awaitable[None] | None:
        """Start the analysis of ``flow``; what to await when flows are saved (``-w``), so
        that the saved flow carries its result."""
        if not self._pending(flow) or self.pipeline is None:
            return None
        worker = self._worker_ready()
        if worker is not None and not self.saving and _small_messages(flow):
            try:  # the common case: its state, and an answer only if one is wanted
                worker.submit_flow(self.feed, flow, self.answers_wanted(),
                                   lambda answer, problem: self._on_answer(flow, None, worker,
                                                                           answer, problem))
            except WorkerBroken:  # closed meanwhile: a thread
                pass
            else:
                return None
        exchange = self._exchange_of(flow)
        if exchange is None:
            return None
        enforced = flow.metadata.get(ENFORCED_KEY)
        if worker is not None and not self.saving:  # long messages, cut: after the flows before
            self.feed.flush()
            try:
                answer = worker.submit(exchange, enforced)
            except WorkerBroken:
                pass
            else:
                worker.send_now()  # before any later frame of the feed
                self._await_answer(flow, exchange, worker, answer)
                return None
        job = asyncio.ensure_future(self._analyse(exchange, self.pipeline, enforced, self.saving))
        self._follow(flow, exchange, job)
        # shielded: a stop that cancels this hook must not lose the analysis
        return _waited(asyncio.shield(job)) if self.saving else None

    def _await_answer(self, flow: Flow, exchange: Exchange, worker: AnalysisWorker,
                      answer: asyncio.Future[Answer]) -> None:
        self.in_flight.add(answer)
        answer.add_done_callback(lambda done: self._answered(flow, exchange, worker, done))

    def _exchange_of(self, flow: Flow) -> Exchange | None:
        """What is analysed of ``flow``: its exchange as the phone sent it, a giant body cut
        to the cap (the rest is never scanned); None for a flow leakmap does not log."""
        exchange = exchange_from_flow(flow)
        if exchange is None or self.pipeline is None:
            return exchange
        return as_sent(flow, exchange).within(self.pipeline.classifier.limits.max_body_bytes)

    def _follow(self, flow: Flow, exchange: Exchange, job: asyncio.Future[Analysed]) -> None:
        self.in_flight.add(job)
        job.add_done_callback(lambda done: self._finish(flow, exchange, done))

    def _worker_ready(self) -> AnalysisWorker | None:
        """The analysis process, if it takes flows now (a failed one is dropped here)."""
        worker = self.worker
        if worker is None:
            return None
        if not worker.ready:  # starting, closed or failed
            if worker.failure is not None:
                self._drop_worker(worker, worker.failure)
            return None
        if not self.worker_announced:
            self.worker_announced = True
            log.info("leakmap: analysis process ready; flows are analysed there from now on")
        return worker

    def _answered(self, flow: Flow, exchange: Exchange, worker: AnalysisWorker,
                  answer: asyncio.Future[Answer]) -> None:
        """The analysis process's answer for ``flow``, handed over as ``exchange``."""
        self.in_flight.discard(answer)
        if not answer.cancelled():
            problem = answer.exception()
            self._on_answer(flow, exchange, worker, None if problem else answer.result(), problem)

    def _remake(self, flow: Flow) -> FlowRecord | None:
        """The record of ``flow`` made here: the analysis process stored it without an answer,
        and died before it was committed."""
        exchange = self._exchange_of(flow)
        if exchange is None or self.pipeline is None:
            return None
        record = self.pipeline.process(exchange)
        mark_enforced(record, flow.metadata.get(ENFORCED_KEY))
        return record

    def _on_answer(self, flow: Flow, exchange: Exchange | None, worker: AnalysisWorker,
                   answer: Answer | None, problem: BaseException | None) -> None:
        """The analysis process's answer for ``flow`` (handed over as ``exchange``, or as its
        state: None); if it has none (``problem``), a thread analyses it."""
        if answer is not None:
            summary, stored = answer
            self._keep(flow, exchange, summary, stored)
            self._tell(flow)
            return
        if worker.failure is not None:
            self._drop_worker(worker, worker.failure)
        elif problem is not None and not isinstance(problem, WorkerBroken):  # unexpected:
            self._drop_worker(worker, problem)  # threads from now on
        exchange = exchange or self._exchange_of(flow)
        if self.pipeline is not None and exchange is not None:
            self._follow(flow, exchange, asyncio.ensure_future(self._on_thread(exchange, self.pipeline)))

    async def _on_thread(self, exchange: Exchange, pipeline: Pipeline) -> Analysed:
        return await asyncio.to_thread(pipeline.process, exchange), None, False

    async def _analyse(self, exchange: Exchange, pipeline: Pipeline,
                       enforced: dict[str, Any] | None, urgent: bool) -> Analysed:
        """The record of ``exchange``: from the analysis process once it is up, else a thread.
        ``enforced``: what the Enforcer did to the request; ``urgent``: a hook waits for it."""
        worker = self._worker_ready()
        if worker is not None:
            try:
                summary, stored = await worker.process(exchange, enforced, urgent)
                return None, summary, stored
            except WorkerBroken:  # the process died (then drop it), or took not this flow
                if worker.failure is not None:
                    self._drop_worker(worker, worker.failure)
            except Exception as e:  # unexpected: threads from now on
                self._drop_worker(worker, e)
        return await self._on_thread(exchange, pipeline)

    def _drop_worker(self, worker: AnalysisWorker, problem: BaseException) -> None:
        self._retire(worker)
        if self.worker is worker:  # not already replaced (a new configuration) or dropped
            log.error("leakmap: analysis process failed (%s: %s); analysing on threads from now on",
                      type(problem).__name__, problem)
            self.worker = None

    def _finish(self, flow: Flow, exchange: Exchange, job: asyncio.Future[Analysed]) -> None:
        self.in_flight.discard(job)
        if job.cancelled():
            return
        problem = job.exception()
        if problem is not None:  # a leakmap bug (decoders do not raise on payloads): said
            log.error("leakmap: analysing %s failed (%s: %s); it is recorded without findings",
                      exchange.url or exchange.host, type(problem).__name__, problem)
            record = FlowRecord(exchange, analysis_error=f"analysis failed: {type(problem).__name__}")
            self._keep(flow, record)
            self._tell(flow)
            return
        record, summary, stored = job.result()
        self._keep(flow, record or exchange, summary, stored)
        self._tell(flow)

    def _tell(self, flow: Flow) -> None:
        for listener in self.listeners:
            try:
                listener(flow)
            except Exception:  # one listener's bug must not cost the others the flow
                log.exception("leakmap: listener failed on flow %s", flow.id)

    def _started(self, flow: Flow) -> None:
        self.open_flows.add(flow)

    request = tcp_start = udp_start = dns_request = _started

    async def settle(self) -> None:
        """Wait until no analysis is under way; each one has handed its flow on by then."""
        while True:
            self.feed.flush()
            workers = [worker for worker in (self.worker, *self.retired)
                       if worker is not None and worker.waiting]
            waits = [*self.in_flight, *(worker.answered() for worker in workers)]
            if not waits:
                return
            await asyncio.gather(*waits, return_exceptions=True)
            await asyncio.sleep(0)  # the done-callbacks (_finish, _on_answer) run first

    async def done(self) -> None:
        """Finish analyses under way and analyse the flows still open, so that a
        clean stop records them too."""
        if self.watcher is not None:
            self.watcher.cancel()
        await self.settle()
        if self.worker is not None:
            self._retire(self.worker)  # the Recorder waits for its writer (close_workers)
            self.worker = None
        for flow in self.open_flows.drain():
            exchange = exchange_from_flow(flow) if self._pending(flow) else None
            if exchange is not None and self.pipeline is not None:
                exchange.error = exchange.error or STILL_OPEN
                self._keep(flow, self.pipeline.process(as_sent(flow, exchange)))
                self._tell(flow)

    # Sync hooks: an async one costs a coroutine per flow, for nothing but when flows are saved
    # (then _inspect returns what mitmproxy awaits).
    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._inspect(flow) if flow.websocket is None else None

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return self._inspect(flow) if flow.websocket is None else None

    def _ended(self, flow: Flow) -> Awaitable[None] | None:
        return self._inspect(flow)

    # a CONNECT whose server cannot be reached (where the phone tried to go), and the ends of
    # WebSocket, TCP and UDP flows and DNS lookups
    http_connect_error = websocket_end = tcp_end = udp_end = dns_response = dns_error = _ended

    def tls_failed_client(self, data: tls.TlsData) -> None:
        if self.pipeline is not None:
            record = self.pipeline.process(exchange_from_tls_failure(data, time.time()))
            tls_records(data).append(record)


RELOAD_POLL_SECONDS = 0.25


def file_stamps(paths: list[Path]) -> Stamps:
    """What tells that a file changed: modification time, size, inode (None: missing)."""
    stamps: Stamps = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            stamps.append(None)
            continue
        stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return stamps


MESSAGES_AS_STATE = 1 << 20  # a flow's messages handed over whole up to this many bytes in all


def _small_messages(flow: Flow) -> bool:
    """Whether ``flow`` goes to the analysis process as its state: all but a TCP, UDP or
    WebSocket flow whose messages hold more than ``MESSAGES_AS_STATE`` bytes (the state
    carries them inline; its exchange, cut to the cap, goes instead)."""
    messages = flow.websocket.messages if isinstance(flow, http.HTTPFlow) and flow.websocket \
        else getattr(flow, "messages", None)
    return not messages or sum(len(m.content) for m in messages) <= MESSAGES_AS_STATE


def as_sent(flow: Flow, exchange: Exchange) -> Exchange:
    """``exchange`` with the request as the phone sent it, where the Enforcer redacted it."""
    sent: Exchange | None = getattr(flow, ORIGINAL_ATTRIBUTE, None)
    if sent is None:
        return exchange
    return replace(exchange, url=sent.url, path=sent.path, request_headers=sent.request_headers,
                   request_body=sent.request_body, request_body_truncated=sent.request_body_truncated)


def refuse(problem: str, starting: bool) -> None:
    """A bad setting: one log line at start-up (mitmproxy then exits), else reject it.

    Raising while mitmproxy loads the script would print a traceback.
    """
    if starting:
        log.error(problem)
        return
    raise exceptions.OptionsError(problem)


def flow_record(flow: Flow) -> FlowRecord | None:
    """The Inspector's result for ``flow``, if it has one."""
    summary = flow.metadata.get(METADATA_KEY)
    cached = getattr(flow, "_leakmap_record", None)
    if cached is not None and cached[0] is summary:
        if cached[1] is None:  # made once asked for
            made = cached[2] if isinstance(cached[2], Exchange) else cached[2](flow)
            cached[1] = record_from_summary(made, summary) if made is not None else None
        return cached[1]  # type: ignore[no-any-return]
    exchange = exchange_from_flow(flow) if summary else None
    return record_from_summary(exchange, summary) if exchange and summary else None


def settled_change(stamps: Stamps, loaded: Stamps, changing: Stamps | None) -> tuple[bool, Stamps | None]:
    """Whether to load the files now that they look like ``stamps`` (``loaded``: as when last
    loaded; ``changing``: as at the previous look, if they had changed then), and what to
    remember for the next look.  Only a change that held still from one look to the next is
    loaded."""
    if stamps == loaded:
        return False, None
    if stamps != changing:
        return False, stamps  # still moving, or just moved: look again
    return True, None


def quiet(summary: dict[str, Any]) -> bool:
    """Whether an analysed flow has nothing to show: no finding, no action, no problem."""
    return not summary.get("findings") and summary.get("action", "log") == "log" and not (
        summary.get("analysis_error"))


async def _waited(job: Awaitable[Any]) -> None:
    await job


def tls_records(data: tls.TlsData) -> list[FlowRecord]:
    """Records for a failed handshake, which has no flow to carry metadata."""
    records: list[FlowRecord] | None = getattr(data, "leakmap_records", None)
    if records is None:
        records = []
        data.leakmap_records = records  # type: ignore[attr-defined]
    return records


def _left_in_spill(left: int | None, worker: AnalysisWorker,
                   counts: tuple[int, int] | None) -> int | None:
    """``left`` plus the records ``worker`` left in its spill file (``counts``, from
    :meth:`AnalysisWorker.stored`); None once one ended without saying."""
    if worker.store_problem is not None or not worker.storing:
        return left
    return None if counts is None or left is None else left + counts[1]
