"""Shared fixtures: real databases, a real proxy process, a real TLS server."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from servers import TLSServer, free_port, wait_for_port

HERE = Path(__file__).parent
SAMPLES = HERE.parent / "samples"
BIN = Path(sys.executable).parent
PG_URL = os.environ.get(
    "LEAKMAP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def leakmap_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keys and default databases go to a per-test folder, never the user's home."""
    home = tmp_path / "home"
    monkeypatch.setenv("LEAKMAP_HOME", str(home))
    return home


def _postgres_reason() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        return f"no PostgreSQL server answers at {make_url(PG_URL).render_as_string()}: {e}"
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The URL of a reachable PostgreSQL server, or a skip (a failure in CI)."""
    reason = _postgres_reason()
    if reason is not None:
        if os.environ.get("LEAKMAP_REQUIRE_PG") == "1":
            pytest.fail(f"LEAKMAP_REQUIRE_PG=1 but {reason}")
        pytest.skip(f"{reason} (set LEAKMAP_TEST_PG_URL to test against PostgreSQL)")
    return PG_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"leakmap_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    with TLSServer(tmp_path) as server:
        yield server


@pytest.fixture
def networks_file(tmp_path: Path) -> Path:
    """Loopback placed in Beijing: how a lab (and these tests) pins a destination."""
    path = tmp_path / "networks.yaml"
    path.write_text(
        "- {cidr: 127.0.0.0/8, country: CN, asn: 4808, as_org: China Unicom Beijing}\n"
    )
    return path


class Proxy:
    """A real ``leakmap run`` (or ``mitmdump -s``) subprocess on a free port."""

    def __init__(self, command: list[str], port: int, confdir: Path, log: Path,
                 wait_port: bool = True) -> None:
        self.port = port
        self.confdir = confdir
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        if wait_port:
            wait_for_port(port, self.process)
        else:
            self.wait_for_output("listening at")

    def wait_for_output(self, text: str, timeout: float = 30, count: int = 1) -> None:
        """Until ``text`` has appeared ``count`` times in the proxy's output."""
        deadline = time.monotonic() + timeout
        while self.output.count(text) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"proxy not ready:\n{self.output}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout)
        self._log.close()
        return self.process.returncode

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator:
    started: list[Proxy] = []

    def start(*leakmap_args: str, via: str = "leakmap", wait_port: bool = True,
              listen_port: int | None = None, script: Path | None = None) -> Proxy:
        port = listen_port or free_port()
        confdir = tmp_path / f"mitm-{port}"
        common = ["--set", f"confdir={confdir}", "--set", "ssl_insecure=true"]
        if any("postgresql" in arg for arg in leakmap_args) and not any(
                "capture" in arg for arg in leakmap_args):
            # a PostgreSQL store has no folder for the run's capture: the test's own folder
            folder = tmp_path / "captures"
            common += (["--capture-dir", str(folder)] if via == "leakmap"
                       else ["--set", f"leakmap_capture_dir={folder}"])
        if not any("workers" in arg for arg in leakmap_args):
            # Analysis on threads unless a test asks for the process: starting one per
            # proxy costs seconds of CPU. test_live.py runs the process path end to end.
            common += ["--set", "leakmap_workers=0"]
        if via == "leakmap":
            command = [str(BIN / "leakmap"), "run", "--listen-port", str(port),
                       *leakmap_args, *common]
        else:  # the plain mitmproxy way: mitmdump or mitmweb -s SCRIPT
            script = script or Path(subprocess.run(
                [str(BIN / "leakmap"), "addon-path"], check=True, capture_output=True,
                text=True).stdout.strip())
            command = [str(BIN / via), "-s", str(script), "--listen-port", str(port),
                       *leakmap_args, *common]
        proxy = Proxy(command, port, confdir, tmp_path / f"proxy-{port}.log", wait_port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        if proxy.process.poll() is None:
            proxy.process.kill()
            proxy.process.wait()


def leakmap_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the installed ``leakmap`` command."""
    result = subprocess.run([str(BIN / "leakmap"), *args], capture_output=True, text=True,
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"leakmap {' '.join(args)} failed:\n{result.stderr}")
    return result


@pytest.fixture
def device_file(tmp_path: Path) -> Path:
    path = tmp_path / "device.yaml"
    shutil.copy(SAMPLES / "redmi-1s.yaml", path)
    return path
