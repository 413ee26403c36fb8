"""The database schema: runs, flows and findings.  The only place it is defined.

Changes go through an Alembic migration in ``store/migrations/versions`` so
that a database written by an older leakmap still opens.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One capture session (``leakmap run``) or one offline analysis."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    command: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="running")
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    tool_version: Mapped[str] = mapped_column(String(40))
    policy_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    policy_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)  # the profile's name (model)
    # JSON: the files and limits it was judged with (policy, device, networks, geoip_dir...)
    settings: Mapped[str | None] = mapped_column(Text, nullable=True)
    mode: Mapped[str | None] = mapped_column(String(100), nullable=True)
    captures: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    # JSON: the geolocation databases (path, type, build date) and entity file version used
    geodb: Mapped[str | None] = mapped_column(Text, nullable=True)
    # raw PII values kept (--store-raw); otherwise only masked previews and keyed hashes
    store_raw: Mapped[bool] = mapped_column(Boolean, default=False)
    # the process writing a live run, so that a run whose process died is marked "aborted"
    hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    process_start: Mapped[str | None] = mapped_column(String(40), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    flows: Mapped[list[Flow]] = relationship(back_populates="run")


class Flow(Base):
    """Every flow the proxy saw or a capture held, with or without findings."""

    __tablename__ = "flows"
    __table_args__ = (
        UniqueConstraint("run_id", "flow_id", name="uq_flows_run_flow"),
        Index("ix_flows_country", "country"),
        Index("ix_flows_operator_country", "operator_country"),
        Index("ix_flows_watched", "watched"),
        Index("ix_flows_action", "action"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    flow_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    timestamp: Mapped[datetime] = mapped_column(DateTime)
    client_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    server_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    server_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sni: Mapped[str | None] = mapped_column(Text, nullable=True)
    host: Mapped[str | None] = mapped_column(Text, nullable=True)
    scheme: Mapped[str | None] = mapped_column(String(16), nullable=True)
    method: Mapped[str | None] = mapped_column(String(32), nullable=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    http_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    request_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    response_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    geo_scope: Mapped[str | None] = mapped_column(String(16), nullable=True)
    country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    city: Mapped[str | None] = mapped_column(Text, nullable=True)
    asn: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    as_org: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the address the location fields describe, and where it came from: "server", or "dns"
    # (an answer recorded in the capture, for DNS records and flows without a server address)
    geo_ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    geo_ip_source: Mapped[str | None] = mapped_column(String(8), nullable=True)
    domain: Mapped[str | None] = mapped_column(Text, nullable=True)  # registrable domain of host
    operator: Mapped[str | None] = mapped_column(String(200), nullable=True)
    operator_country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    attribution: Mapped[str | None] = mapped_column(String(16), nullable=True)
    watched: Mapped[bool] = mapped_column(Boolean, default=False)
    watch_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    finding_count: Mapped[int] = mapped_column(Integer, default=0)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    flow_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    analysis_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # the policy that judged this flow (a live run reloads it when its file changes)
    policy_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # log | alert | block | redact, and the rule that said so (core/actions.py)
    action: Mapped[str] = mapped_column(String(16), default="log")
    action_rule: Mapped[str | None] = mapped_column(Text, nullable=True)
    enforced: Mapped[bool] = mapped_column(Boolean, default=False)  # False offline: what it would do

    run: Mapped[Run] = relationship(back_populates="flows")
    findings: Mapped[list[Finding]] = relationship(back_populates="flow")


class Finding(Base):
    """One (flow, field, data type).  The raw value only when asked for."""

    __tablename__ = "findings"
    __table_args__ = (
        Index("ix_findings_data_type", "data_type"),
        UniqueConstraint("flow_pk", "field", "data_type", name="uq_findings_flow_field_type"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flow_pk: Mapped[int] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"), index=True)
    data_type: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    field: Mapped[str] = mapped_column(Text)
    encoding: Mapped[str] = mapped_column(String(100))
    match: Mapped[str] = mapped_column(String(16))
    preview: Mapped[str] = mapped_column(Text)
    value_hash: Mapped[str] = mapped_column(String(64))
    raw_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    action: Mapped[str] = mapped_column(String(16), default="log")  # this finding's own action

    flow: Mapped[Flow] = relationship(back_populates="findings")


class Step(Base):
    """One step of a run's scenario (``leakmap run --scenario``): what the tester did, and when.

    A flow belongs to the step whose [started_at, ended_at) holds its timestamp.
    """

    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "number", name="uq_steps_run_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # from 1
    name: Mapped[str] = mapped_column(String(200))
    instruction: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
