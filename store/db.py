"""Opening the store, managing runs, and writing flows.

Any SQLAlchemy URL works; the default is one SQLite file under the leakmap
home (``$LEAKMAP_HOME``, else ``$XDG_DATA_HOME/leakmap``, else
``~/.local/share/leakmap``).  ``store/writer.py`` batches records on a
worker thread so the proxy never waits on the database.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    create_engine,
    delete,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from leakmap.core.exchange import is_storable_time
from leakmap.core.pipeline import FlowRecord, scalar_fields
from leakmap.store.schema import Finding, Flow, Run, Step

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
    """A naive UTC datetime; 1970-01-01 for a time none can hold (core/exchange.py:
    check_time notes it on the flow; a row from an older spill file must not fail its batch)."""
    moment = timestamp if is_storable_time(timestamp) else 0.0
    return datetime.fromtimestamp(moment, tz=UTC).replace(tzinfo=None)


def utcnow() -> datetime:
    return datetime.now(tz=UTC).replace(tzinfo=None)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _create_private(path: Path) -> None:
    """Create an SQLite file readable by its owner only (SQLite gives its -wal and -shm
    files the same mode); an existing file keeps its mode."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError, OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def open_store(url: str | None = None) -> Engine:
    """An engine on ``url`` with the schema migrated to the newest version."""
    url = url or default_db_url()
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"{url}: not a database URL ({e})") from e
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _create_private(Path(parsed.database).expanduser())
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

    sqlite = engine.dialect.name == "sqlite"
    try:
        with engine.connect() as connection:
            if sqlite:  # a migration that rebuilds a table must not cascade-delete its children
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            with connection.begin():
                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        if sqlite:
            engine.dispose()  # new connections get foreign_keys=ON from _sqlite_pragmas
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"{safe_url(url)}: cannot open database: {reason}") from e
    except CommandError as e:
        raise StoreError(
            f"{safe_url(url)}: database schema is not one this leakmap knows "
            f"(written by a newer version?): {e}"
        ) from e
    return engine


def database_identity(url: str) -> str:
    """One spelling per database: an SQLite file by its absolute path."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return url
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return "sqlite:" + str(Path(parsed.database).expanduser().resolve())
    return parsed.set(password=None).render_as_string(hide_password=False)


def database_digest(url: str) -> str:
    """A short name for a database (its key file, its spill folder)."""
    return hashlib.sha256(database_identity(url).encode()).hexdigest()[:16]


def hash_key_for(url: str, key_file: str | Path | None = None) -> bytes:
    """The HMAC key for ``url``'s findings, kept outside the database.

    One key per database, in ``$LEAKMAP_HOME/keys/``; created on first use.
    """
    if key_file is None:
        digest = database_digest(url)
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
    store_raw: bool = False,
    device: str | None = None,
    settings: dict[str, Any] | None = None,
) -> int:
    """A new run row; its id.  Runs whose process died first get marked "aborted"."""
    mark_abandoned_runs(engine)
    run = Run(
        name=name,
        command=command_name,
        status="running",
        started_at=utcnow(),
        tool_version=tool_version,
        policy_name=policy_name,
        policy_sha256=policy_sha256,
        device_sha256=device_sha256,
        device=device[:200] if device else None,
        settings=json.dumps(settings) if settings else None,
        mode=mode,
        captures=json.dumps(list(captures)) if captures else None,
        geodb=json.dumps(geodb) if geodb else None,
        store_raw=store_raw,
        hostname=socket.gethostname()[:255],
        pid=os.getpid(),
        process_start=process_start(os.getpid()),
        heartbeat_at=utcnow(),
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


def set_run_captures(engine: Engine, run_id: int, captures: Sequence[dict[str, Any]]) -> None:
    """Record the run's capture files (``{path, sha256}``; the hash once the file is closed)."""
    with Session(engine) as session, session.begin():
        session.execute(update(Run).where(Run.id == run_id).values(captures=json.dumps(list(captures))))


# --------------------------------------------------------------------------
# Scenario steps: started and ended by the tester (Enter in the proxy's console, or
# ``leakmap step next`` from anywhere that reaches the database)


def create_steps(engine: Engine, run_id: int, steps: Iterable[tuple[int, str, str]],
                 start_first: bool = True) -> None:
    """The run's steps ``(number, name, instruction)``; the first starts now."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        for number, name, instruction in steps:
            session.add(Step(run_id=run_id, number=number, name=name[:200], instruction=instruction,
                             started_at=now if start_first and number == 1 else None))


def advance_step(engine: Engine, run_id: int) -> tuple[str | None, str | None]:
    """End the current step and start the next: (ended, started) as ``N name``, None where
    there was none.  Safe when two testers press at once: the rows are locked."""
    now = utcnow()
    with Session(engine) as session, session.begin():
        steps = list(session.scalars(select(Step).where(Step.run_id == run_id)
                                     .order_by(Step.number).with_for_update()))
        current = next((s for s in steps if s.started_at is not None and s.ended_at is None), None)
        waiting = next((s for s in steps if s.started_at is None), None)
        if current is not None:
            current.ended_at = now
        if waiting is not None:
            waiting.started_at = now
        return (_step_label(current), _step_label(waiting))


def current_step(engine: Engine, run_id: int) -> dict[str, Any] | None:
    """The step under way (``number``, ``name``, ``instruction``), or None."""
    with Session(engine) as session:
        step = session.scalars(select(Step).where(Step.run_id == run_id, Step.started_at.is_not(None),
                                                  Step.ended_at.is_(None))).first()
        if step is None:
            return None
        return {"number": step.number, "name": step.name, "instruction": step.instruction}


def end_open_steps(engine: Engine, run_id: int) -> None:
    """The run stops: the step under way ends with it."""
    with Session(engine) as session, session.begin():
        session.execute(update(Step).where(Step.run_id == run_id, Step.started_at.is_not(None),
                                           Step.ended_at.is_(None)).values(ended_at=utcnow()))


def insert_steps(engine: Engine, run_id: int, steps: Iterable[dict[str, Any]]) -> None:
    """Steps with their times as a report or bundle gives them (ISO 8601 UTC, ``Z``)."""
    def moment(text: str | None) -> datetime | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None) if text else None

    with Session(engine) as session, session.begin():
        for step in steps:
            session.add(Step(run_id=run_id, number=step["number"], name=step["name"],
                             instruction=step.get("instruction"), started_at=moment(step.get("started_at")),
                             ended_at=moment(step.get("ended_at"))))


def copy_steps(engine: Engine, from_run: int, to_run: int) -> None:
    """A reanalysis keeps the steps of the run it judges again (its flows keep their times)."""
    with Session(engine) as session, session.begin():
        for step in session.scalars(select(Step).where(Step.run_id == from_run)).all():
            session.add(Step(run_id=to_run, number=step.number, name=step.name,
                             instruction=step.instruction, started_at=step.started_at,
                             ended_at=step.ended_at))


def _step_label(step: Step | None) -> str | None:
    return f"{step.number} {step.name}" if step is not None else None


def heartbeat(engine: Engine, run_id: int) -> None:
    """Say the run's process is alive (a writer does it every few seconds)."""
    with engine.begin() as connection:
        connection.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))


# A run on another machine that has not said it is alive for this long is abandoned.
STALE_AFTER = timedelta(minutes=10)


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None.

    With the pid it names one process: a pid reused by a later process has
    another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int | None, started: str | None) -> bool:
    if pid is None:
        return False
    if started is not None and Path("/proc").is_dir():
        return process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_abandoned_runs(engine: Engine) -> list[str]:
    """Mark runs whose process died without closing them "aborted"; their names.

    A run of this machine is abandoned when its process is gone; one of
    another machine when it has not sent a heartbeat for ``STALE_AFTER``.
    Its ``ended_at`` is its last heartbeat.
    """
    here, now, ended = socket.gethostname()[:255], utcnow(), []
    with Session(engine) as session, session.begin():
        for run in session.scalars(select(Run).where(Run.status == "running")):
            if run.hostname is None:
                continue  # written by a leakmap before revision 0003
            if run.hostname == here:
                gone = not _alive(run.pid, run.process_start)
            else:
                gone = run.heartbeat_at is not None and now - run.heartbeat_at > STALE_AFTER
            if gone:
                run.status, run.ended_at = "aborted", run.heartbeat_at or run.started_at
                ended.append(run.name)
    for name in ended:
        log.warning("leakmap: run %r ended abnormally (its proxy was killed); marked aborted", name)
    return ended


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
def _limits(table: Table) -> tuple[tuple[tuple[str, int | None], ...], tuple[tuple[str, int], ...]]:
    """((text column, length or None), ...), ((integer column, bound), ...) of ``table``."""
    texts = tuple((column.name, column.type.length) for column in table.columns
                  if isinstance(column.type, String))
    integers = tuple((column.name, _INT64 if isinstance(column.type, BigInteger) else _INT32)
                     for column in table.columns if isinstance(column.type, Integer))
    return texts, integers


def _fit(table: Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` made storable in ``table``: captured traffic sets no limits."""
    texts, integers = _limits(table)
    for name, length in texts:
        value = values.get(name)
        if isinstance(value, str) and (
                (length is not None and len(value) > length) or "\x00" in value or not value.isascii()):
            values[name] = _clean_text(value, length)
    for name, bound in integers:
        value = values.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and not -bound <= value <= bound:
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
        "timestamp": exchange.timestamp,  # epoch seconds until written: rows are JSON for the spill
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
        **scalar_fields(record.destination()),
        "finding_count": len(record.findings),
        "truncated": record.truncated,
        "flow_error": exchange.error,
        "analysis_error": record.analysis_error,
        "policy_sha256": record.policy_sha256,
        "action": record.action,
        "action_rule": record.action_rule,
        "enforced": record.enforced,
    }


def record_row(run_id: int, record: FlowRecord) -> dict[str, Any]:
    """What the store keeps of ``record``, as plain JSON-ready data: ``{flow, findings}``.

    Rows, not records, are what a spill file holds: request bodies never
    reach the disk there, only what the database would hold.
    """
    findings = []
    for finding in record.findings:
        values = scalar_fields(finding)
        values["field"] = _short_field(finding.field)
        findings.append(_fit(Finding.__table__, values))  # type: ignore[arg-type]
    return {"flow": _fit(Flow.__table__, _flow_values(run_id, record)),  # type: ignore[arg-type]
            "findings": findings}


def write_records(engine: Engine, run_id: int, records: Iterable[FlowRecord]) -> int:
    """Write ``records`` in one transaction; a flow already stored is replaced."""
    return write_rows(engine, [record_row(run_id, record) for record in records])


def _flow_keys(connection: Connection, rows: Sequence[dict[str, Any]]) -> dict[tuple[int, str], int]:
    """The primary key of each just-written flow of ``rows``, by (run id, flow id)."""
    keys: dict[tuple[int, str], int] = {}
    wanted: dict[int, list[str]] = {}
    for row in rows:
        wanted.setdefault(row["flow"]["run_id"], []).append(row["flow"]["flow_id"])
    for run_id, flow_ids in wanted.items():
        for start in range(0, len(flow_ids), _KEYS_PER_SELECT):
            chosen = select(Flow.id, Flow.flow_id).where(
                Flow.run_id == run_id, Flow.flow_id.in_(flow_ids[start : start + _KEYS_PER_SELECT]))
            keys.update(((run_id, flow_id), key) for key, flow_id in connection.execute(chosen))
    return keys


_KEYS_PER_SELECT = 500  # flow ids bound in one IN (...): well under every driver's limit


def write_rows(engine: Engine, rows: Sequence[dict[str, Any]]) -> int:
    """Write rows of :func:`record_row` in one transaction, replacing by (run, flow id).

    Core inserts (executemany), not ORM objects: the writer shares its process
    with the proxy's or the reader's work, so its per-row cost counts.  Rows are
    inserted first; only if one of them is already stored (the unique (run, flow
    id) refuses it: a spill replayed, a flow analysed again) is the transaction
    rolled back and the batch written again with its old rows deleted first.
    New flows, nearly all of them, so cost three statements, not five.
    """
    latest = {(row["flow"]["run_id"], row["flow"]["flow_id"]): row for row in rows}  # last wins
    if not latest:
        return 0
    batch = list(latest.values())
    try:
        with engine.begin() as connection:
            _insert_rows(connection, batch)
    except IntegrityError:
        with engine.begin() as connection:
            _delete_flows(connection, list(latest))
            _insert_rows(connection, batch)
    return len(batch)


def _delete_flows(connection: Connection, keys: Sequence[tuple[int, str]]) -> None:
    """Delete the flows of ``keys`` ((run id, flow id)) with their findings."""
    for run_id in {run for run, _ in keys}:
        ids = [flow_id for run, flow_id in keys if run == run_id]
        stored = select(Flow.id).where(Flow.run_id == run_id, Flow.flow_id.in_(ids))
        connection.execute(delete(Finding).where(Finding.flow_pk.in_(stored)))
        connection.execute(delete(Flow).where(Flow.run_id == run_id, Flow.flow_id.in_(ids)))


def _insert_rows(connection: Connection, batch: Sequence[dict[str, Any]]) -> None:
    # A plain executemany, then the new keys in one SELECT: RETURNING would cost
    # SQLite one statement per row.
    connection.execute(
        insert(Flow),
        [{**row["flow"], "timestamp": utc_from_timestamp(row["flow"]["timestamp"])}
         for row in batch],
    )
    keys = _flow_keys(connection, [row for row in batch if row["findings"]])
    findings = [
        {**finding, "flow_pk": keys[row["flow"]["run_id"], row["flow"]["flow_id"]]}
        for row in batch if row["findings"]
        for finding in row["findings"]
    ]
    if findings:
        connection.execute(insert(Finding), findings)
