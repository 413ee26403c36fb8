"""Network namespaces made by a test: a "phone" whose traffic must go through the proxy.

Only addresses on the test's own veth link (10.77.N.0/24) and loopback are used, and
everything made is removed again.  Where namespaces cannot be made (no root, a sandbox), the
tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass
class Phone:
    namespace: str
    host_side: str  # the veth in the test's own namespace
    host_ip: str  # its address: the phone's router
    phone_ip: str

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.namespace, *command], capture_output=True,
                              text=True, timeout=timeout, check=False)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces_reason() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"lmprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


@contextmanager
def phone_namespace(number: int) -> Iterator[Phone]:
    reason = namespaces_reason()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 10000}{number}"
    phone = Phone(f"lmphone{tag}", f"lmh{tag}", f"10.77.{number}.1", f"10.77.{number}.2")
    inside = f"lmp{tag}"
    try:
        _ip("netns", "add", phone.namespace)
        _ip("link", "add", phone.host_side, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", phone.namespace)
        _ip("addr", "add", f"{phone.host_ip}/24", "dev", phone.host_side)
        _ip("link", "set", phone.host_side, "up")
        _ip("-n", phone.namespace, "addr", "add", f"{phone.phone_ip}/24", "dev", inside)
        _ip("-n", phone.namespace, "link", "set", inside, "up")
        _ip("-n", phone.namespace, "link", "set", "lo", "up")
        _ip("-n", phone.namespace, "route", "add", "default", "via", phone.host_ip)
        yield phone
    finally:
        subprocess.run(["ip", "link", "del", phone.host_side], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", phone.namespace], capture_output=True, check=False)
