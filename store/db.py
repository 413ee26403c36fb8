"""Opening the store, managing runs, and writing flows off the event loop.

Any SQLAlchemy URL works; the default is one SQLite file under the leakmap
home (``$LEAKMAP_HOME``, else ``$XDG_DATA_HOME/leakmap``, else
``~/.local/share/leakmap``).  :class:`FlowWriter` batches records on a worker
thread so the proxy never waits on the database.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Engine, Table, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import Session

from leakmap.core.pipeline import FlowRecord
from leakmap.store.schema import Finding, Flow, Run

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    """The database cannot be used; the message says which and why."""


def leakmap_home() -> Path:
    if os.environ.get("LEAKMAP_HOME"):
        return Path(os.environ["LEAKMAP_HOME"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "leakmap"


def default_db_url() -> str:
    return f"sqlite:///{leakmap_home() / 'leakmap.db'}"


def safe_url(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def utc_from_timestamp(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC).replace(tzinfo=None)


def utcnow() -> datetime:
    return datetime.now(tz=UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_store(url: str | None = None) -> Engine:
    """An engine on ``url`` with the schema migrated to the newest version."""
    url = url or default_db_url()
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"{url}: not a database URL ({e})") from e
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, ImportError) as e:
        raise StoreError(f"{safe_url(url)}: cannot use this database ({e})") from e
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    # Alembic logs its plugin set-up at import; a proxy's console has no use for it.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"{safe_url(url)}: cannot open database: {reason}") from e
    except CommandError as e:
        raise StoreError(
            f"{safe_url(url)}: database schema is not one this leakmap knows "
            f"(written by a newer version?): {e}"
        ) from e
    return engine


def _database_identity(url: str) -> str:
    """One spelling per database: an SQLite file by its absolute path."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return "sqlite:" + str(Path(parsed.database).expanduser().resolve())
    return parsed.set(password=None).render_as_string(hide_password=False)


def hash_key_for(url: str, key_file: str | Path | None = None) -> bytes:
    """The HMAC key for ``url``'s findings, kept outside the database.

    One key per database, in ``$LEAKMAP_HOME/keys/``; created on first use.
    """
    if key_file is None:
        digest = hashlib.sha256(_database_identity(url).encode()).hexdigest()[:16]
        key_file = leakmap_home() / "keys" / f"{digest}.key"
    path = Path(key_file)
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key.hex())
    return bytes.fromhex(path.read_text().strip())


# --------------------------------------------------------------------------
# Runs.


def start_run(
    engine: Engine,
    name: str,
    command_name: str,
    tool_version: str,
    policy_name: str | None = None,
    policy_sha256: str | None = None,
    device_sha256: str | None = None,
    mode: str | None = None,
    captures: Sequence[dict[str, Any]] = (),
    geodb: dict[str, Any] | None = None,
) -> int:
    """A new run row; its id."""
    run = Run(
        name=name,
        command=command_name,
        status="running",
        started_at=utcnow(),
        tool_version=tool_version,
        policy_name=policy_name,
        policy_sha256=policy_sha256,
        device_sha256=device_sha256,
        mode=mode,
        captures=json.dumps(list(captures)) if captures else None,
        geodb=json.dumps(geodb) if geodb else None,
    )
    try:
        with Session(engine) as session, session.begin():
            session.add(run)
            session.flush()
            return run.id
    except IntegrityError as e:
        raise StoreError(f"a run named {name!r} already exists (choose another --run-name)") from e


def finish_run(engine: Engine, run_id: int, status: str = "completed") -> None:
    with Session(engine) as session, session.begin():
        session.execute(
            update(Run).where(Run.id == run_id).values(status=status, ended_at=utcnow())
        )


# --------------------------------------------------------------------------
# Writing flows.


_INT32 = 2**31 - 1
_INT64 = 2**63 - 1
_MAX_FIELD_PATH = 1000  # PostgreSQL cannot index (flow, field, type) beyond ~2.7 kB


def _clean_text(value: str, length: int | None) -> str:
    """Text any database accepts: no NUL, no lone surrogates, within the column."""
    text = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return text[:length] if length else text


@functools.cache
def _limits(table: Table) -> tuple[tuple[str, int | None, int], ...]:
    """(column, text length or None, integer bound) for each column of ``table``."""
    return tuple(
        (column.name, getattr(column.type, "length", None),
         _INT64 if isinstance(column.type, BigInteger) else _INT32)
        for column in table.columns
    )


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` made storable in ``table``: captured traffic sets no limits."""
    for name, length, bound in _limits(table):
        value = values.get(name)
        if isinstance(value, str):
            if (length is not None and len(value) > length) or "\x00" in value or not value.isascii():
                values[name] = _clean_text(value, length)
        elif isinstance(value, int) and not isinstance(value, bool) and not -bound <= value <= bound:
            values[name] = None
    return values


def _short_field(path: str) -> str:
    if len(path) <= _MAX_FIELD_PATH:
        return path
    digest = hashlib.sha256(path.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{path[: _MAX_FIELD_PATH - 20]}…#{digest}"


def _flow_values(run_id: int, record: FlowRecord) -> dict[str, Any]:
    exchange = record.exchange
    return {
        "run_id": run_id,
        "flow_id": exchange.flow_id,
        "kind": exchange.kind,
        "timestamp": utc_from_timestamp(exchange.timestamp),
        "client_ip": exchange.client_ip,
        "client_port": exchange.client_port,
        "server_ip": exchange.server_ip,
        "server_port": exchange.server_port,
        "sni": exchange.sni,
        "host": exchange.host,
        "scheme": exchange.scheme,
        "method": exchange.method,
        "url": exchange.url,
        "http_version": exchange.http_version,
        "status_code": exchange.status_code,
        "request_size": exchange.request_size,
        "response_size": exchange.response_size,
        **asdict(record.destination()),
        "finding_count": len(record.findings),
        "truncated": record.truncated,
        "flow_error": exchange.error,
        "analysis_error": record.analysis_error,
    }


def _finding_values(flow_pk: int, record: FlowRecord) -> list[dict[str, Any]]:
    rows = []
    for finding in record.findings:
        values = {"flow_pk": flow_pk, **asdict(finding)}
        values["field"] = _short_field(finding.field)
        rows.append(_fit(Finding.__table__, values))  # type: ignore[arg-type]
    return rows


def write_records(engine: Engine, run_id: int, records: Iterable[FlowRecord]) -> int:
    """Write ``records`` in one transaction; a flow already stored is replaced.

    Core inserts (executemany with RETURNING), not ORM objects: the writer
    thread shares the interpreter with the proxy, so its per-row cost counts.
    """
    latest = {record.exchange.flow_id: record for record in records}  # last one wins
    if not latest:
        return 0
    batch = list(latest.values())
    ids = list(latest)
    with engine.begin() as connection:
        stored = select(Flow.id).where(Flow.run_id == run_id, Flow.flow_id.in_(ids))
        connection.execute(delete(Finding).where(Finding.flow_pk.in_(stored)))
        connection.execute(delete(Flow).where(Flow.run_id == run_id, Flow.flow_id.in_(ids)))
        inserted = connection.execute(
            insert(Flow).returning(Flow.id, sort_by_parameter_order=True),
            [_fit(Flow.__table__, _flow_values(run_id, record)) for record in batch],  # type: ignore[arg-type]
        )
        findings = [
            row
            for flow_pk, record in zip(inserted.scalars().all(), batch, strict=True)
            for row in _finding_values(flow_pk, record)
        ]
        if findings:
            connection.execute(insert(Finding), findings)
    return len(batch)


def _reason(error: SQLAlchemyError) -> str:
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


class FlowWriter:
    """Writes records on a worker thread, in batches, never on the caller's.

    ``submit`` only enqueues.  A batch is committed when it holds
    ``batch_size`` records or ``interval`` seconds have passed, so a crash
    loses at most the last interval.  When a write fails the batch is kept
    and retried; ``close`` drains everything that was submitted.
    """

    def __init__(self, engine: Engine, run_id: int, interval: float = 0.5, batch_size: int = 500):
        self.engine = engine
        self.run_id = run_id
        self.interval = interval
        self.batch_size = batch_size
        self.written = 0
        self.unwritten = 0
        self.last_error: str | None = None
        self._queue: queue.Queue[FlowRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="leakmap-writer", daemon=True)
        self._thread.start()

    def submit(self, record: FlowRecord) -> None:
        self._queue.put(record)

    def close(self, timeout: float | None = None) -> int:
        """Write what is pending and stop; the number of records that could not be written."""
        self._queue.put(None)
        self._thread.join(timeout)
        return self.unwritten

    def _loop(self) -> None:
        pending: list[FlowRecord] = []
        closing = False
        while not closing or pending:
            closing = self._collect(pending, closing)
            if pending and not self._write(pending) and not closing:
                time.sleep(self.interval)
            if closing and pending and self.last_error:
                time.sleep(self.interval)
                if not self._write(pending):
                    self.unwritten = len(pending) + self._queue.qsize()
                    log.error("leakmap: %d records not written: %s", self.unwritten, self.last_error)
                    return

    def _collect(self, pending: list[FlowRecord], closing: bool) -> bool:
        deadline = time.monotonic() + self.interval
        while len(pending) < self.batch_size and not closing:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                closing = True
            else:
                pending.append(item)
        return closing

    def _write(self, pending: list[FlowRecord]) -> bool:
        try:
            self._write_batch(pending)
        except (OperationalError, InterfaceError) as e:  # the database is away: retry later
            self.last_error = _reason(e)
            log.warning("leakmap: database write failed, will retry: %s", self.last_error)
            return False  # writes replace by flow id, so a retry cannot duplicate
        pending.clear()
        self.last_error = None
        return True

    def _write_batch(self, pending: list[FlowRecord]) -> None:
        try:
            self.written += write_records(self.engine, self.run_id, pending)
        except (OperationalError, InterfaceError):
            raise
        except SQLAlchemyError as e:  # something in the batch: store the rest
            log.warning("leakmap: batch refused (%s); writing its flows one by one", _reason(e))
            self._write_one_by_one(pending)

    def _write_one_by_one(self, records: list[FlowRecord]) -> None:
        """Keep every flow: one the database refuses is stored without its findings."""
        for record in records:
            try:
                self.written += write_records(self.engine, self.run_id, [record])
                continue
            except (OperationalError, InterfaceError):
                raise
            except SQLAlchemyError as e:
                problem = f"findings not stored: {_reason(e)}"
            bare = replace(record, findings=[], analysis_error="; ".join(
                p for p in (record.analysis_error, problem) if p))
            try:
                self.written += write_records(self.engine, self.run_id, [bare])
            except SQLAlchemyError as e:
                self.unwritten += 1
                log.error("leakmap: flow %s not stored: %s", record.exchange.flow_id, _reason(e))
