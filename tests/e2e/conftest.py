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

When a test fails, the stdout/stderr of every broker it started is attached
to the pytest report (shown as "fjord ... stderr" sections).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Sequence

import pytest

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
    ) -> None:
        self.binary = Path(binary)
        self.data_dir = Path(data_dir)
        self.log_dir = Path(log_dir)
        self.extra_args = list(extra_args)
        self.port = port if port is not None else free_port()
        self.name = name
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
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.log_dir,
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

    Each broker gets its own free port, ``tmp_path/<name>/data`` as data dir
    and ``tmp_path/<name>/`` for its logs.  At teardown every broker that is
    still running is stopped with SIGTERM and must exit with code 0.
    """
    brokers: list[Broker] = []
    request.node._fjord_brokers = brokers  # read by pytest_runtest_makereport

    def make(*extra_args: str, name: str | None = None) -> Broker:
        name = name or f"fjord{len(brokers)}"
        base = tmp_path / name
        b = Broker(fjord_bin, base / "data", base, extra_args=extra_args, name=name)
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
