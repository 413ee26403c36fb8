"""``leakmap setup transparent`` and ``leakmap setup wireguard``: the phone's way into the proxy.

``transparent`` prints (or, with ``--apply``, runs) the sysctl and nftables
commands that make a Linux machine the phone's router and redirect its web
ports into ``leakmap run --mode transparent``.  The rules live in their own
nftables table (``leakmap_<interface>``), so ``--undo`` removes exactly them
and nothing of the machine's own firewall; the sysctl values found before
are saved and restored.

``wireguard`` shows the client configuration of ``leakmap run --mode
wireguard`` and its QR code, before the proxy runs: the keys are mitmproxy's
own key file, created here if it does not exist yet.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import click

from leakmap.cli.main import cli, fail_cleanly
from leakmap.cli.private import write_private

SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
           "net.ipv4.conf.all.send_redirects": "0"}


@cli.group("setup")
def setup_group() -> None:
    """Set up the network path from the phone to the proxy."""


def table_name(interface: str) -> str:
    """``leakmap_wlan0``; other characters spelled out, so ``wlan.0`` and ``wlan_0`` differ."""
    return "leakmap_" + "".join(ch if ch.isalnum() else f"_{ord(ch):02x}" for ch in interface)


def nft_ruleset(interface: str, port: int, ports: tuple[int, ...], block_quic: bool) -> str:
    """One nftables table: the phone's web ports redirected to the proxy; QUIC refused so
    apps fall back to TCP, which is redirected."""
    table = table_name(interface)
    redirect = ", ".join(str(p) for p in ports)
    lines = [f"table inet {table} {{",
             "  chain prerouting {",
             "    type nat hook prerouting priority dstnat; policy accept;",
             f'    iifname "{interface}" tcp dport {{ {redirect} }} redirect to :{port}',
             "  }"]
    if block_quic:
        lines += ["  chain forward {",
                  "    type filter hook forward priority filter; policy accept;",
                  f'    iifname "{interface}" udp dport 443 reject',
                  "  }"]
    return "\n".join([*lines, "}"]) + "\n"


def _state_file(interface: str) -> Path:
    from leakmap.store.db import leakmap_home

    return leakmap_home() / "setup" / f"transparent-{table_name(interface)}.json"


def _run(command: list[str], stdin: str | None = None) -> None:
    try:
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise click.ClickException(f"{command[0]} not found: {_MISSING.get(command[0], 'install it')}"
                                   ) from e
    if done.returncode != 0:
        raise click.ClickException(f"{shlex.join(command)} failed: "
                                   f"{(done.stderr or done.stdout).strip() or done.returncode}")


def _sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return path.read_text().strip()
    except OSError:
        return None


@setup_group.command("transparent")
@click.option("--interface", required=True, help="The interface the phone is on (the hotspot's).")
@click.option("--port", default=8080, show_default=True, help="The port leakmap run listens on.")
@click.option("--ports", default="80,443", show_default=True, help="The phone's TCP ports to redirect.")
@click.option("--allow-quic", is_flag=True, default=False,
              help="Do not refuse QUIC (UDP 443); HTTP/3 then passes unseen.")
@click.option("--apply", "apply_now", is_flag=True, default=False,
              help="Run the commands (as root) instead of printing them.")
@click.option("--undo", is_flag=True, default=False,
              help="The commands that remove the rules and restore the sysctls (run with --apply).")
@fail_cleanly
def transparent(interface: str, port: int, ports: str, allow_quic: bool, apply_now: bool,
                undo: bool) -> None:
    """Print (or apply) the routing and redirect rules for transparent mode.

    Example: leakmap setup transparent --interface wlan0            # print

    Example: sudo leakmap setup transparent --interface wlan0 --apply
    """
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,15}", interface):
        raise click.BadParameter(f"{interface!r} is not an interface name", param_hint="--interface")
    wanted = _ports(ports)
    if undo:
        _undo(interface, apply_now)
        return
    ruleset = nft_ruleset(interface, port, wanted, not allow_quic)
    if not apply_now:
        click.echo("# Transparent mode for a phone on " + interface + " (run as root, or add --apply)")
        for name, value in SYSCTLS.items():
            click.echo(f"sysctl -w {name}={value}")
        click.echo(f"nft -f - <<'EOF'\n{ruleset}EOF")
        click.echo(f"# then: leakmap run --mode transparent --listen-port {port} --device phone.yaml")
        click.echo(f"# undo: leakmap setup transparent --interface {interface} --undo --apply")
        return
    state = _state_file(interface)
    state.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not state.exists():  # the values before the first --apply, to restore on --undo
        state.write_text(json.dumps({name: _sysctl(name) for name in SYSCTLS}))
    for name, value in SYSCTLS.items():
        _run(["sysctl", "-q", "-w", f"{name}={value}"])
    if _has_table(interface):  # applied again: the rules replaced, not doubled
        _run(["nft", "delete", "table", "inet", table_name(interface)])
    _run(["nft", "-f", "-"], ruleset)
    click.echo(f"applied: forwarding on, {', '.join(map(str, wanted))}/tcp from {interface} redirected "
               f"to :{port}{'' if allow_quic else ', QUIC refused'}", err=True)


def _ports(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or not all(item.isdigit() and 1 <= int(item) <= 65535 for item in items):
        raise click.BadParameter(f"{text!r} is not a list of TCP ports such as 80,443", param_hint="--ports")
    return tuple(int(item) for item in items)


def _has_table(interface: str) -> bool:
    try:
        done = subprocess.run(["nft", "list", "table", "inet", table_name(interface)],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:  # no nftables: no table either (applying then says what to install)
        return False
    return done.returncode == 0


_MISSING = {"nft": "install nftables (apt-get install --no-install-recommends nftables)"}


def _undo(interface: str, apply_now: bool) -> None:
    state = _state_file(interface)
    saved = json.loads(state.read_text()) if state.exists() else {}
    # only the settings this command changes, to plain numbers: the file is not trusted further
    restore = {name: str(value) for name, value in saved.items()
               if name in SYSCTLS and isinstance(value, str) and value.isdigit()}
    if not apply_now:
        click.echo(f"nft delete table inet {table_name(interface)}")
        for name, value in restore.items():
            click.echo(f"sysctl -w {name}={value}")
        if not restore:
            click.echo("# no saved sysctl values (nothing was applied with --apply)")
        return
    if _has_table(interface):
        _run(["nft", "delete", "table", "inet", table_name(interface)])
    for name, value in restore.items():
        _run(["sysctl", "-q", "-w", f"{name}={value}"])
    state.unlink(missing_ok=True)
    click.echo(f"removed the rules for {interface}" + (", sysctls restored" if restore else ""), err=True)


# --------------------------------------------------------------------------
# WireGuard


def wireguard_keys(key_file: Path) -> tuple[str, str]:
    """(server key, client key) of mitmproxy's key file, created as mitmproxy would."""
    import mitmproxy_rs.wireguard

    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(handle, "w") as out:
            json.dump({"server_key": mitmproxy_rs.wireguard.genkey(),
                       "client_key": mitmproxy_rs.wireguard.genkey()}, out, indent=4)
    try:
        keys = json.loads(key_file.read_text())
        mitmproxy_rs.wireguard.pubkey(keys["server_key"])
        mitmproxy_rs.wireguard.pubkey(keys["client_key"])
    except Exception as e:
        raise click.ClickException(f"{key_file}: not a mitmproxy WireGuard key file ({e})") from e
    return keys["server_key"], keys["client_key"]


def client_conf(server_key: str, client_key: str, endpoint: str, port: int) -> str:
    """The phone's side, as mitmproxy's WireGuard mode prints it."""
    import mitmproxy_rs.wireguard

    host = f"[{endpoint}]" if ":" in endpoint else endpoint
    return (f"[Interface]\nPrivateKey = {client_key}\nAddress = 10.0.0.1/32\nDNS = 10.0.0.53\n\n"
            f"[Peer]\nPublicKey = {mitmproxy_rs.wireguard.pubkey(server_key)}\n"
            f"AllowedIPs = 0.0.0.0/0\nEndpoint = {host}:{port}\n")


@setup_group.command("wireguard")
@click.option("--confdir", default="~/.mitmproxy", show_default=True,
              help="mitmproxy's configuration folder (leakmap run --set confdir=...).")
@click.option("--key-file", default=None, help="The key file of --mode wireguard:FILE "
              "(default: CONFDIR/wireguard.conf).")
@click.option("--endpoint", default=None, help="The address the phone reaches this machine at "
              "(default: this machine's address on its default route).")
@click.option("--port", default=51820, show_default=True, help="UDP port (--mode wireguard@PORT).")
@click.option("--qr/--no-qr", default=True, show_default=True, help="Also print a QR code to scan.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the configuration to this file (mode 0600).")
@fail_cleanly
def wireguard(confdir: str, key_file: str | None, endpoint: str | None, port: int, qr: bool,
              output: Path | None) -> None:
    """Show the phone's WireGuard configuration and its QR code.

    Scan it with the WireGuard app, then start: leakmap run --mode wireguard

    Example: leakmap setup wireguard --endpoint 192.168.1.20
    """
    from mitmproxy.net import local_ip

    keys = Path(key_file).expanduser() if key_file else Path(confdir).expanduser() / "wireguard.conf"
    server_key, client_key = wireguard_keys(keys)
    host = endpoint or local_ip.get_local_ip() or local_ip.get_local_ip6()
    if not host:
        raise click.ClickException("no network address found for this machine: give --endpoint")
    conf = client_conf(server_key, client_key, host, port)
    click.echo(conf)
    if output is not None:
        write_private(output, conf)
    if qr:
        import segno

        picture = io.StringIO()
        segno.make(conf, error="m").terminal(out=picture, compact=True)
        click.echo(picture.getvalue())
    mode = "wireguard" if key_file is None else f"wireguard:{keys}"
    click.echo(f"# then: leakmap run --mode {mode}{'' if port == 51820 else f'@{port}'}"
               f"{'' if key_file or confdir == '~/.mitmproxy' else f' --set confdir={confdir}'}", err=True)
