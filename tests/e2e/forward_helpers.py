"""Helpers for the ``fjord forward`` end-to-end tests (tests/e2e/test_forward*.py).

* :class:`HandlerProcess` -- a record handler built on the Python receiving side
  (``fjord.serve``), run as a separate process (``python forward_helpers.py handler ...``) so
  that it gets its own interpreter (and GIL).  Its behaviour is chosen per record from a hash
  of the record's value, so it is the same after restarts; it logs every attempt as a JSON line
  that the test reads back with :meth:`HandlerProcess.events`.
* :class:`Forwarder` -- one ``fjord forward`` process with a generated TOML file; start, stop
  (SIGTERM, exit 0), kill (SIGKILL), restart; its logs are attached to failing tests.
* Kafka helpers: producing keyed records with a :class:`checker.Recorder`, reading a whole
  topic, reading a group's committed offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
PYTHON_CLIENT = REPO_ROOT / "clients" / "python"
if str(PYTHON_CLIENT) not in sys.path:
    sys.path.insert(0, str(PYTHON_CLIENT))

STARTUP_TIMEOUT_S = 20.0


def _port_accepts(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_port(proc: subprocess.Popen, port: int, what: str, logs: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _port_accepts(port):
        rc = proc.poll()
        assert rc is None, f"{what} exited with {rc} during startup\n{logs}"
        assert time.monotonic() < deadline, f"{what} did not open port {port}\n{logs}"
        time.sleep(0.05)


def _tail(path: Path, limit: int = 32 * 1024) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "<no log>"
    return data[-limit:].decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# The handler: behaviour, and the process that runs it
# ---------------------------------------------------------------------------


@dataclass
class Behaviour:
    """What the test handler does with a record (chosen by a hash of its value)."""

    #: fail (raise) the first attempt of this fraction of records
    fail_first: float = 0.0
    #: answer DEAD_LETTER for this fraction
    dead_letter: float = 0.0
    #: always fail this fraction ("poison records")
    always_fail: float = 0.0
    #: answer Retry(after=retry_after_s) on the first attempt of this fraction
    retry_after: float = 0.0
    retry_after_s: float = 0.0
    #: take ``slow_ms`` for this fraction
    slow: float = 0.0
    slow_ms: float = 0.0
    #: every record takes this long
    sleep_ms: float = 0.0
    #: plus a random 0..jitter_ms
    jitter_ms: float = 0.0
    #: serve with an ``async def`` handler
    use_async: bool = False
    #: every record takes ``slow_until_ms`` longer while the file ``slow_until_file`` does not
    #: exist (a slow endpoint that recovers when the test creates the file)
    slow_until_file: str = ""
    slow_until_ms: float = 0.0

    def bucket(self, value: bytes) -> float:
        """Where a value falls in [0, 1): independent of the process and run."""
        return (zlib.crc32(value) % 10_000) / 10_000

    def plan(self, value: bytes) -> str:
        b = self.bucket(value)
        edges = [("dead_letter", self.dead_letter), ("always_fail", self.always_fail),
                 ("fail_first", self.fail_first), ("retry_after", self.retry_after)]
        lo = 0.0
        for name, share in edges:
            if lo <= b < lo + share:
                return name
            lo += share
        return "ok"

    def is_slow(self, value: bytes) -> bool:
        # A second, independent hash.
        return (zlib.crc32(value[::-1]) % 10_000) / 10_000 < self.slow


def run_handler(port: int, log_path: str, behaviour: Behaviour) -> None:
    """The handler process's main: serves until SIGTERM."""
    import fjord.receive as fjord

    log = open(log_path, "a", buffering=1)
    lock = threading.Lock()

    def record_event(r: "fjord.Record", result: str, start: float) -> None:
        line = json.dumps({
            "t": r.topic, "p": r.partition, "o": r.offset,
            "k": r.key.decode() if r.key is not None else None,
            "v": r.value.decode() if r.value is not None else None,
            "a": r.attempt, "c": r.cluster, "r": result, "s": start, "e": time.time(),
        })
        with lock:
            log.write(line + "\n")

    def decide(r: "fjord.Record") -> tuple[float, Optional[Exception]]:
        value = r.value or b""
        delay = behaviour.sleep_ms / 1000
        if behaviour.jitter_ms:
            delay += random.random() * behaviour.jitter_ms / 1000
        if behaviour.is_slow(value):
            delay += behaviour.slow_ms / 1000
        if behaviour.slow_until_file and not os.path.exists(behaviour.slow_until_file):
            delay += behaviour.slow_until_ms / 1000
        plan = behaviour.plan(value)
        error: Optional[Exception] = None
        if plan == "dead_letter":
            error = fjord.DeadLetter(f"unacceptable {value.decode()}")
        elif plan == "always_fail":
            error = RuntimeError(f"poison {value.decode()}")
        elif plan == "fail_first" and r.attempt == 1:
            error = RuntimeError("first attempt fails")
        elif plan == "retry_after" and r.attempt == 1:
            error = fjord.Retry("come back later", after=behaviour.retry_after_s)
        return delay, error

    def outcome(error: Optional[Exception]) -> str:
        if error is None:
            return "ack"
        return "dead" if isinstance(error, fjord.DeadLetter) else "retry"

    def handle(r: "fjord.Record") -> None:
        start = time.time()
        delay, error = decide(r)
        if delay:
            time.sleep(delay)
        record_event(r, outcome(error), start)
        if error is not None:
            raise error

    async def handle_async(r: "fjord.Record") -> None:
        start = time.time()
        delay, error = decide(r)
        if delay:
            await asyncio.sleep(delay)
        record_event(r, outcome(error), start)
        if error is not None:
            raise error

    server = fjord.serve(handle_async if behaviour.use_async else handle, port=port,
                         max_concurrency=256, block=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(0.2)
    server.stop(0.5)
    log.close()


class HandlerProcess:
    """The test handler in its own process; ``events()`` reads what it logged."""

    def __init__(self, tmp_path: Path, port: int, behaviour: Behaviour, name: str = "handler"):
        self.port = port
        self.behaviour = behaviour
        self.log_path = tmp_path / f"{name}.events.jsonl"
        self.err_path = tmp_path / f"{name}.stderr"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HandlerProcess":
        args = [sys.executable, str(Path(__file__)), "handler", "--port", str(self.port),
                "--log", str(self.log_path), "--behaviour", json.dumps(self.behaviour.__dict__)]
        with open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _wait_port(self.proc, self.port, "handler", _tail(self.err_path))
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def events(self) -> list[dict]:
        """Every attempt logged so far (complete lines only)."""
        try:
            text = self.log_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def logs(self) -> str:
        return f"--- {self.err_path} ---\n{_tail(self.err_path)}"


# ---------------------------------------------------------------------------
# The forwarder process
# ---------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def render_config(metrics_port: int, clusters: dict[str, str], subscriptions: list[dict],
                  shutdown_timeout_secs: int = 5) -> str:
    """A forwarder TOML file.  Each subscription dict holds top-level keys plus optional
    ``retry`` and ``consumer_properties`` dicts."""
    lines = [f'metrics_listen = "127.0.0.1:{metrics_port}"',
             f"shutdown_timeout_secs = {shutdown_timeout_secs}", ""]
    for name, bootstrap in clusters.items():
        lines += [f"[clusters.{name}]", f"bootstrap = {toml_value(bootstrap)}", ""]
    for sub in subscriptions:
        lines.append("[[subscription]]")
        tables = {k: v for k, v in sub.items() if isinstance(v, dict)}
        for k, v in sub.items():
            if not isinstance(v, dict):
                lines.append(f"{k} = {toml_value(v)}")
        for table, values in tables.items():
            lines.append(f"[subscription.{table}]")
            lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


#: librdkafka settings that make group changes quick in tests.
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


class Forwarder:
    """One ``fjord forward`` process, restartable with the same configuration."""

    def __init__(self, fjord_bin: Path, tmp_path: Path, metrics_port: int, config_text: str,
                 name: str = "forwarder"):
        self.binary = Path(fjord_bin)
        self.metrics_port = metrics_port
        self.config_path = tmp_path / f"{name}.toml"
        self.config_path.write_text(config_text)
        self.stdout_path = tmp_path / f"{name}.stdout"
        self.stderr_path = tmp_path / f"{name}.stderr"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    def start(self) -> "Forwarder":
        assert self.proc is None or self.proc.poll() is not None
        self.starts += 1
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            err.write(f"==== start #{self.starts}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                [str(self.binary), "forward", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        _wait_port(self.proc, self.metrics_port, "fjord forward", self.logs())
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM; asserts a clean exit (code 0) within ``timeout``."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"fjord forward ignored SIGTERM for {timeout}s\n{self.logs()}")
        self.proc = None
        assert rc == 0, f"fjord forward exited with {rc} after SIGTERM\n{self.logs()}"

    def metrics(self) -> dict[str, float]:
        """``{'name{labels}': value}`` from the Prometheus endpoint."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def metric(self, prefix: str) -> float:
        """Sum of the samples whose name (with labels) starts with ``prefix``."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def logs(self) -> str:
        return (f"--- {self.stderr_path} ---\n{_tail(self.stderr_path)}\n"
                f"--- {self.stdout_path} ---\n{_tail(self.stdout_path)}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


# ---------------------------------------------------------------------------
# Kafka side
# ---------------------------------------------------------------------------


def produce(bootstrap: str, topic: str, values: list[tuple[Optional[bytes], bytes]], recorder,
            rate: Optional[float] = None) -> None:
    """Produce ``(key, value)`` pairs (idempotent, acks=all) recording the acks in
    ``recorder`` (a :class:`checker.Recorder`); ``rate``: records per second."""
    from confluent_kafka import Producer
    from kafka_helpers import flush_all, produce_with_backpressure

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5, "acks": "all"})
    start = time.monotonic()
    for i, (key, value) in enumerate(values):
        if rate:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        recorder.attempt(value)
        produce_with_backpressure(p, topic, key=key, value=value, on_delivery=recorder.on_delivery)
    flush_all(p)


def read_topic(bootstrap: str, topic: str, timeout: float = 30.0) -> list:
    """Every record of ``topic`` (all partitions), as confluent-kafka messages."""
    from kafka_helpers import admin_client, consume_partitions

    md = admin_client(bootstrap).list_topics(topic, timeout=10)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return []
    got = consume_partitions(bootstrap, topic, list(t.partitions), timeout=timeout)
    return [m for p in sorted(got) for m in got[p]]


def committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    """``{partition: committed offset}`` of ``group`` (partitions without one: absent)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        c.close()


def headers_of(msg) -> dict[str, bytes]:
    return {k: v for k, v in (msg.headers() or [])}


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    """Polls ``predicate`` until truthy (returned) or fails after ``timeout`` with ``what()``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what() if callable(what) else what}")
        time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("handler")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--log", required=True)
    h.add_argument("--behaviour", default="{}")
    args = parser.parse_args()
    if args.cmd == "handler":
        run_handler(args.port, args.log, Behaviour(**json.loads(args.behaviour)))


if __name__ == "__main__":
    main()
