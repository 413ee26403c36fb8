"""``leakmap geo lookup`` and ``leakmap geodb info``: the destination data, inspected.

``geo lookup`` runs the same :class:`~leakmap.core.destination.Locator` the
pipeline runs, so what it prints is what a flow to that address and host
would record.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from leakmap.cli import render
from leakmap.cli.main import cli, fail_cleanly
from leakmap.core.exchange import Exchange
from leakmap.store.queries import describe_destination

LOOKUP_COLUMNS = (
    ("target", "target", 32), ("ip", "address", 39), ("country", "cc", 2), ("city", "city", 16),
    ("asn", "asn", 10), ("as_org", "network", 24), ("operator", "operator", 16),
    ("operator_country", "op cc", 5), ("attribution", "by", 7), ("watch_reason", "watched", 30),
)
INFO_COLUMNS = (
    ("kind", "kind", 7), ("database_type", "type", 20), ("build_date", "built", 10),
    ("age_days", "age (days)", 10), ("networks", "networks", 9), ("path", "path", 4096),
)


def _split_target(target: str) -> tuple[str | None, str | None]:
    """(host, address) of ``IP``, ``HOST`` or ``HOST=IP``."""
    host, equals, address = target.partition("=")
    if equals:
        return host.strip() or None, address.strip() or None
    try:
        ipaddress.ip_address(target.strip("[]"))
    except ValueError:
        return target.strip(), None
    return None, target.strip()


def _resolve(host: str) -> str | None:
    """The first address the system resolver gives for host (IPv4 first), or None."""
    try:
        answers = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return None
    addresses = [str(answer[4][0]) for answer in answers]
    addresses.sort(key=lambda address: ":" in address)
    return addresses[0] if addresses else None


def lookup_row(locator: Any, target: str, resolve: bool) -> dict[str, Any]:
    """What the pipeline would record for a flow to ``target``."""
    host, address = _split_target(target)
    source = "given" if address else None
    if address is None and host and resolve and "=" not in target:
        address = _resolve(host)
        source = "resolved" if address else "unresolved"
    exchange = Exchange(flow_id="lookup", kind="http", timestamp=0.0, host=host, server_ip=address)
    place = asdict(locator.locate(exchange))
    row = {"target": target, "host": host, "ip": address, "ip_source": source, **place}
    row.pop("geo_ip", None)
    row.pop("geo_ip_source", None)
    row["destination"] = describe_destination(row)
    return row


@cli.group("geo")
def geo() -> None:
    """Where an address is and who runs it, as the pipeline decides it."""


@geo.command("lookup")
@click.argument("targets", nargs=-1, required=True)
@click.option("--policy", default="", help="Policy YAML (its watch:, entities: and networks:).")
@click.option("--geoip-dir", default="", help="Folder with MaxMind or DB-IP mmdb files.")
@click.option("--networks", default="", help="YAML list of address-range overrides.")
@click.option("--resolve/--no-resolve", default=True, show_default=True,
              help="Look a bare HOST up with the system resolver (never done during analysis).")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@fail_cleanly
def lookup(targets: tuple[str, ...], policy: str, geoip_dir: str, networks: str, resolve: bool,
           output_format: str) -> None:
    """Print, for each IP, HOST or HOST=IP, what a flow there would record.

    Example: leakmap geo lookup api.account.xiaomi.com=13.228.0.1 8.8.8.8
    """
    from leakmap.policies.model import load_policy
    from leakmap.wiring import build_locator

    resolver, _entities, locator = build_locator(load_policy(policy or None), geoip_dir, networks)
    with resolver:
        rows = [lookup_row(locator, target, resolve) for target in targets]
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    click.echo("\n".join(render.table_lines(rows, LOOKUP_COLUMNS)))
    for row in rows:
        click.echo(render.printable(f"{row['target']}: {row['destination']}"
                                    + (f" [watched: {row['watch_reason']}]" if row["watched"] else "")))


@cli.group("geodb")
def geodb() -> None:
    """The geolocation databases leakmap reads."""


@geodb.command("info")
@click.option("--geoip-dir", default="", help="Folder with MaxMind or DB-IP mmdb files.")
@click.option("--geodb-max-age", "max_age", type=int, default=180, show_default=True,
              help="Warn about databases built more than this many days ago.")
@click.option("--format", "output_format", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@fail_cleanly
def info(geoip_dir: str, max_age: int, output_format: str) -> None:
    """Print the databases in use, their build dates and how many networks they cover.

    Example: leakmap geodb info --geoip-dir /var/lib/GeoIP
    """
    from leakmap.geodb.entities import load_entity_file
    from leakmap.geodb.inventory import describe, stale_warnings
    from leakmap.geodb.lookup import DATA_DIR, GeoResolver

    with GeoResolver(geoip_dir or None) as resolver:
        opened = [(db["kind"], Path(db["path"])) for db in resolver.databases()]
    infos = describe(opened, max_age, datetime.now(tz=UTC), DATA_DIR)
    entities = load_entity_file()
    if output_format == "json":
        click.echo(json.dumps({"databases": [i.as_dict() for i in infos],
                               "entities": {"path": str(entities.path), "version": entities.version,
                                            "count": len(entities.entries)}},
                              indent=2, default=str))
    else:
        click.echo("\n".join(render.table_lines([i.as_dict() for i in infos], INFO_COLUMNS)))
        click.echo(f"entities: {entities.path} version {entities.version}, "
                   f"{len(entities.entries)} companies")
    for warning in stale_warnings(infos, max_age):
        click.echo(f"Warning: {warning}", err=True)
