"""Shared fixtures for Fjord's end-to-end tests.

Every test talks to a real ``fjord serve`` process over TCP on 127.0.0.1,
using off-the-shelf Kafka clients (kcat, confluent-kafka, kafka-python,
kafkajs).  The harness here only starts, stops, kills and restarts that
process; the Kafka-level helpers live in ``kafka_helpers.py``.

Fixtures:

``fjord_bin``
    Path to the broker binary.  ``$FJORD_BIN`` overrides the default
    ``<repo>/target/release/fjord``.
``broker_factory``
    ``broker_factory(*extra_args)`` returns a started :class:`Broker` with
    its own port and data directory; all of them are stopped at teardown.
``broker``
    One started broker with default settings.
``topic``
    A topic name unique to the test (the topic itself is not created).
``s3_endpoint``
    An S3-compatible server (moto) on loopback with an empty bucket
    :data:`S3_BUCKET`: ``(url, boto3 client)``.  :func:`use_s3` points the
    brokers started afterwards at an endpoint.
``faulty_s3``
    The same behind an :class:`~s3_fault_proxy.S3FaultProxy`
    (a :class:`FaultyS3`).
``postgres_db``
    The URL of a fresh, empty database on the throwaway PostgreSQL named by
    ``$FJORD_TEST_POSTGRES_URL`` (see scripts/test-postgres.sh), dropped at
    teardown.  :func:`stop_postgres`, :func:`start_postgres` and
    :func:`restart_postgres` stop and start that server (``$FJORD_PG_DIR``).

When a test fails, the stdout/stderr of every broker it started is attached
to the pytest report (shown as "fjord ... stderr" sections).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

import pytest

from s3_fault_proxy import S3FaultProxy

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FJORD_BIN = REPO_ROOT / "target" / "release" / "fjord"

#: How long a broker may take from spawn until its port accepts connections.
STARTUP_TIMEOUT_S = 20.0
#: How long a broker may take to exit after SIGTERM.
SHUTDOWN_TIMEOUT_S = 20.0
#: How much of each log file is attached to a failure report.
LOG_TAIL_BYTES = 64 * 1024


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is released before returning, so another process could grab it
    in between; on a test machine that race is negligible.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """Return (at most) the last ``limit`` bytes of a file as text."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except FileNotFoundError:
        return "<no log file>"
    text = data.decode("utf-8", errors="replace")
    if size > limit:
        text = f"<... {size - limit} earlier bytes omitted ...>\n" + text
    return text


class Broker:
    """One ``fjord serve`` process, restartable on the same port and data dir.

    Output of every incarnation is appended to ``<log_dir>/fjord.stdout`` and
    ``<log_dir>/fjord.stderr``, with a marker line before each start.
    """

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        log_dir: Path,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        name: str = "fjord",
        nofile: tuple[int, int] | None = None,
    ) -> None:
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.extra_args = list(extra_args)
        self.port = port if port is not None else free_port()
        self.name = name
        #: ``(soft, hard)`` open-file limit the process starts with (default: inherited).
        self.nofile = nofile
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.log_dir / f"{name}.stdout"
        self.stderr_path = self.log_dir / f"{name}.stderr"

    # ----------------------------------------------------------------- info

    @property
    def bootstrap(self) -> str:
        """``host:port`` for a client's ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        return [
            str(self.binary),
            "serve",
            "--listen",
            self.bootstrap,
            "--advertised-address",
            self.bootstrap,
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def logs(self) -> str:
        """Tails of stdout and stderr of all incarnations so far."""
        return (
            f"--- {self.stdout_path} ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.stderr_path} ---\n{_tail(self.stderr_path)}"
        )

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid}" if self.running else "not running"
        return f"<Broker {self.name} {self.bootstrap} {state}>"

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = STARTUP_TIMEOUT_S) -> "Broker":
        """Spawn the broker and wait until its port accepts TCP connections.

        Fails the test (with the broker's logs) if the process exits first
        or the port is not open within ``timeout`` seconds.
        """
        assert not self.running, f"{self!r} is already running"
        self.starts += 1
        cmd = self.command()
        marker = f"==== start #{self.starts}: {' '.join(cmd)}\n".encode()
        for path in (self.stdout_path, self.stderr_path):
            with open(path, "ab") as f:
                f.write(marker)
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        nofile = self.nofile

        def limits() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.log_dir,
                preexec_fn=limits if nofile is not None else None,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                pytest.fail(
                    f"{self.name} exited with code {rc} during startup "
                    f"(start #{self.starts}).\n{self.logs()}",
                    pytrace=False,
                )
            if _port_accepts(self.port):
                return
            if time.monotonic() > deadline:
                self._hard_kill()
                pytest.fail(
                    f"{self.name} did not accept TCP connections on "
                    f"{self.bootstrap} within {timeout:.0f}s.\n{self.logs()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the broker and reap it (simulates a crash)."""
        assert self.running, f"{self!r} is not running"
        self._hard_kill()

    def stop(self, timeout: float = SHUTDOWN_TIMEOUT_S) -> None:
        """SIGTERM the broker, wait for it, and assert it exited with code 0.

        If it does not exit within ``timeout`` seconds it is SIGKILLed and
        the test fails.
        """
        assert self.running, f"{self!r} is not running"
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._hard_kill()
            pytest.fail(
                f"{self.name} did not exit within {timeout:.0f}s of SIGTERM.\n{self.logs()}",
                pytrace=False,
            )
        self.proc = None
        if rc != 0:
            pytest.fail(
                f"{self.name} exited with code {rc} after SIGTERM (expected 0).\n{self.logs()}",
                pytrace=False,
            )

    def restart(self, timeout: float = STARTUP_TIMEOUT_S) -> "Broker":
        """Start again on the same port and data directory.

        Stops the running process gracefully first if there is one (after
        :meth:`kill` there is none).
        """
        if self.running:
            self.stop()
        return self.start(timeout)

    def _hard_kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - kernel trouble
            pass
        self.proc = None


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fjord_bin() -> Path:
    """Path to the fjord binary (``$FJORD_BIN`` or target/release/fjord)."""
    override = os.environ.get("FJORD_BIN")
    path = Path(override) if override else DEFAULT_FJORD_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        how = (
            f"FJORD_BIN={override!r}"
            if override
            else "Build it with `cargo build --release -p fjord` or set FJORD_BIN"
        )
        pytest.fail(f"fjord binary not found or not executable: {path}. {how}.", pytrace=False)
    return path


@pytest.fixture
def broker_factory(fjord_bin: Path, tmp_path: Path, request: pytest.FixtureRequest):
    """Factory for started brokers: ``broker_factory(*extra_args)``.

    ``nofile=(soft, hard)`` starts the broker under that open-file limit.

    Each broker gets its own free port, ``tmp_path/<name>/data`` as data dir
    and ``tmp_path/<name>/`` for its logs.  At teardown every broker that is
    still running is stopped with SIGTERM and must exit with code 0.
    """
    brokers: list[Broker] = []
    request.node._fjord_brokers = brokers  # read by pytest_runtest_makereport

    def make(
        *extra_args: str, name: str | None = None, nofile: tuple[int, int] | None = None
    ) -> Broker:
        name = name or f"fjord{len(brokers)}"
        base = tmp_path / name
        b = Broker(fjord_bin, base / "data", base, extra_args=extra_args, name=name, nofile=nofile)
        brokers.append(b)
        return b.start()

    yield make

    errors = []
    for b in brokers:
        if b.proc is not None and b.proc.poll() is not None:
            errors.append(
                f"{b.name} exited on its own with code {b.proc.returncode} "
                f"(not killed or stopped by the test).\n{b.logs()}"
            )
            b.proc = None
        elif b.running:
            try:
                b.stop()
            except pytest.fail.Exception as e:  # keep stopping the others
                errors.append(str(e))
    for b in brokers:
        b._hard_kill()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def broker(broker_factory) -> Broker:
    """A started single-node broker with default settings."""
    return broker_factory()


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test (only ``[A-Za-z0-9._-]``)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name).strip("-.")[:150]
    return f"{base}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------
# S3 (moto's server mode on loopback), optionally behind a fault proxy
# --------------------------------------------------------------------------

#: The bucket ``s3_endpoint`` creates.
S3_BUCKET = "fjord-e2e"
#: What moto accepts (any credentials) and the brokers send.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


def use_s3(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Make brokers started from now on (their environment) use the S3 server
    at ``endpoint`` for ``s3://`` object stores."""
    for k, v in S3_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT", endpoint)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")


@pytest.fixture
def s3_endpoint(tmp_path: Path):
    """An S3 server on a free loopback port with an empty bucket
    :data:`S3_BUCKET`; yields ``(url, boto3 client)``."""
    import boto3  # only the S3 tests pay for the import

    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        found = shutil.which("moto_server")
        assert found, "moto_server not found: run scripts/setup-test-env.sh (tests/requirements.txt)"
        server = Path(found)
    port = free_port()
    log_path = tmp_path / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not _port_accepts(port):
            assert proc.poll() is None, f"moto_server exited: {log_path.read_text()}"
            assert time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        s3.create_bucket(Bucket=S3_BUCKET)
        yield url, s3
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class FaultyS3:
    """What ``faulty_s3`` yields."""

    #: The proxy's URL: the endpoint to give the broker (see :func:`use_s3`).
    url: str
    #: boto3 client talking to the S3 server directly (never sees faults).
    s3: Any
    #: Fault controls and counters.
    proxy: S3FaultProxy


#: Seed of the fault proxy's random choices: which requests fail or are held
#: is the same from run to run (only the requests themselves vary).
FAULT_SEED = 1


@pytest.fixture
def faulty_s3(s3_endpoint) -> FaultyS3:
    """``s3_endpoint`` behind a fault-injecting proxy (no faults until asked)."""
    upstream, s3 = s3_endpoint
    with S3FaultProxy(upstream, seed=FAULT_SEED) as proxy:
        yield FaultyS3(proxy.url, s3, proxy)


# --------------------------------------------------------------------------
# The throwaway PostgreSQL server (scripts/test-postgres.sh)
# --------------------------------------------------------------------------

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _env_or_fail(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(
            f"{name} is not set: run the suite with ./scripts/test.sh, or start a throwaway "
            'PostgreSQL in the same shell first: eval "$(scripts/test-postgres.sh start)"',
            pytrace=False,
        )
    return value


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)
    assert proc.returncode == 0, (
        f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    )
    return proc


def psql(url: str, sql: str) -> str:
    """Run ``sql`` with psql against the database ``url`` names; return its
    unaligned, tuples-only output (fails the test on error)."""
    return _run([str(PG_BIN / "psql"), url, "-v", "ON_ERROR_STOP=1", "-Atc", sql], "psql").stdout


@pytest.fixture
def postgres_db() -> str:
    """URL of a new, empty database on ``$FJORD_TEST_POSTGRES_URL``'s server,
    dropped (``--force``: connections are ended) at teardown."""
    server = urlsplit(_env_or_fail("FJORD_TEST_POSTGRES_URL"))
    name = f"fjord_test_{uuid.uuid4().hex[:12]}"
    conn = ["-h", server.hostname or "127.0.0.1", "-p", str(server.port or 5432),
            "-U", server.username or "postgres"]
    _run([str(PG_BIN / "createdb"), *conn, name], "createdb")
    try:
        yield urlunsplit(server._replace(path=f"/{name}"))
    finally:
        _run([str(PG_BIN / "dropdb"), *conn, "--force", "--if-exists", name], "dropdb")


def _pg_ctl(*args: str) -> None:
    """Run pg_ctl on ``$FJORD_PG_DIR``'s server, as the ``postgres`` user when
    we are root (as scripts/test-postgres.sh does)."""
    pg_dir = _env_or_fail("FJORD_PG_DIR")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    _run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", f"{pg_dir}/data", "-w", "-t", "30", *args],
         f"pg_ctl {args[0] if args else ''}", cwd=pg_dir)


def stop_postgres() -> None:
    """Stop the throwaway server (``pg_ctl -m fast``: connections are ended)."""
    _pg_ctl("-m", "fast", "stop")


def start_postgres() -> None:
    """Start the throwaway server again, on its port with its settings."""
    pg_dir = _env_or_fail("FJORD_PG_DIR")
    port = Path(pg_dir, "port").read_text().strip()
    # The same settings as scripts/test-postgres.sh's `start`.
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='{pg_dir}' "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        "-c max_connections=300 -c shared_buffers=64MB "
        f"-c ssl=on -c ssl_cert_file='{pg_dir}/server.crt' -c ssl_key_file='{pg_dir}/server.key'"
    )
    _pg_ctl("-l", f"{pg_dir}/server.log", "start", "-o", options)


def restart_postgres(down_seconds: float = 0.0) -> None:
    """Stop the throwaway server, keep it down ``down_seconds``, start it again."""
    stop_postgres()
    time.sleep(down_seconds)
    start_postgres()


# --------------------------------------------------------------------------
# Attach broker logs to failing tests
# --------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for b in getattr(item, "_fjord_brokers", []):
        report.sections.append(
            (f"{b.name} ({b.bootstrap}) stdout [{report.when}]", _tail(b.stdout_path))
        )
        report.sections.append(
            (f"{b.name} ({b.bootstrap}) stderr [{report.when}]", _tail(b.stderr_path))
        )


@pytest.fixture
def procs():
    """Collects handler and forwarder processes (forward_helpers); at teardown kills leftovers
    and prints their logs (pytest shows them for failed tests)."""
    started: list = []
    yield started
    for p in started:
        print(p.logs())
        # A Forwarder's close() kills it if still running; a HandlerProcess has stop().
        getattr(p, "close", p.stop)()
