"""Helpers of the gateway end-to-end tests (test_gateway*.py).

* :class:`GatewayProc` -- one ``fjord gateway`` process: writes its TOML file, starts it, waits
  for its gRPC port, reloads it (rewrite + SIGHUP), scrapes its metrics, stops it.
* :func:`gateway_config` -- the TOML text of a gateway configuration.
* :func:`read_cluster` -- every record of a topic on one cluster (all partitions, from the
  beginning), with headers.
* :func:`client_sockets_to` -- which processes hold TCP connections to a port (from /proc).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional

import pytest

from conftest import free_port, _tail
from kafka_helpers import consume_partitions, make_consumer

STARTUP_TIMEOUT_S = 20.0


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def gateway_config(
    *,
    listen: str,
    metrics_listen: str,
    clusters: Mapping[str, str],
    groups: Mapping[str, Mapping[str, float]],
    topics: Mapping[str, str] = {},
    default_group: Optional[str] = None,
    sections: Mapping[str, Mapping[str, object]] = {},
    cluster_overrides: Mapping[str, str] = {},
    reload_poll_ms: int = 0,
) -> str:
    """TOML of a gateway: ``clusters`` name -> bootstrap, ``groups`` name -> {cluster: weight},
    ``topics`` topic -> group, extra ``sections`` (``delivery``, ``breaker``, ``limits``)."""
    lines = [
        'gateway_id = "gw-e2e"',
        f"listen = {_toml_value(listen)}",
        f"metrics_listen = {_toml_value(metrics_listen)}",
        f"reload_poll_ms = {reload_poll_ms}",
    ]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, bootstrap in clusters.items():
        lines.append(f"[clusters.{name}]")
        lines.append(f"bootstrap_servers = {_toml_value(bootstrap)}")
        if cluster_overrides:
            lines.append(f"overrides = {_toml_value(dict(cluster_overrides))}")
    for name, members in groups.items():
        lines.append(f"[groups.{name}]")
        lines.append(f"clusters = {_toml_value(dict(members))}")
    lines.append("[routes]")
    if default_group:
        lines.append(f"default = {_toml_value(default_group)}")
    lines.append(f"topics = {_toml_value(dict(topics))}")
    return "\n".join(lines) + "\n"


class GatewayProc:
    """One ``fjord gateway`` process with its config file under ``workdir``."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.metrics_port = free_port()
        self.config_path = self.workdir / "gateway.toml"
        self.stderr_path = self.workdir / "gateway.stderr"
        self.proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self, **kwargs) -> str:
        """:func:`gateway_config` with this gateway's listen addresses."""
        return gateway_config(
            listen=self.address, metrics_listen=f"127.0.0.1:{self.metrics_port}", **kwargs
        )

    def start(self, config_text: str) -> "GatewayProc":
        self.config_path.write_text(config_text)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(self.binary), "gateway", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                env=env,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            rc = self.proc.poll()
            assert rc is None, f"gateway exited with {rc} during startup:\n{self.logs()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            assert time.monotonic() < deadline, f"gateway did not start:\n{self.logs()}"
            time.sleep(0.05)

    def reload(self, config_text: str, timeout: float = 10.0, sighup: bool = True) -> None:
        """Rewrites the file, sends SIGHUP (unless the gateway is to notice the change itself),
        waits until the reload was applied."""
        before = self.metric("fjord_gateway_config_reloads_total", result="ok")
        self.config_path.write_text(config_text)
        assert self.proc is not None
        if sighup:
            self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.metric("fjord_gateway_config_reloads_total", result="ok") <= before:
            errors = self.metric("fjord_gateway_config_reloads_total", result="error")
            assert errors == 0, f"reload failed:\n{self.logs()}"
            assert time.monotonic() < deadline, f"reload not applied:\n{self.logs()}"
            time.sleep(0.05)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def logs(self) -> str:
        return f"--- {self.stderr_path} ---\n{_tail(self.stderr_path)}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM; asserts a clean exit (code 0)."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"gateway did not stop on SIGTERM:\n{self.logs()}")
        self.proc = None
        assert rc == 0, f"gateway exited with {rc}:\n{self.logs()}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def gateway_factory(fjord_bin: Path, tmp_path: Path):
    """``gateway_factory()`` returns a new (not started) :class:`GatewayProc`; every one still
    running at teardown is killed, and its log printed (pytest shows it for failed tests)."""
    made: list[GatewayProc] = []

    def make(name: str = "gateway") -> GatewayProc:
        gw = GatewayProc(fjord_bin, tmp_path / name)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        if gw.running:
            print(gw.logs())
            gw.kill()


@dataclass(frozen=True)
class StoredRecord:
    """A record read back from a cluster."""

    partition: int
    offset: int
    key: Optional[bytes]
    value: bytes
    headers: dict


def start_over_two_clusters(broker_factory, gateway_factory, topic: str, partitions: int,
                            sections: dict):
    """Two single-broker Fjord clusters, each with ``topic``, and a gateway routing ``topic`` to
    both with equal weight (group ``both``) and the given config ``sections``: the setting of the
    failover tests and drills. Returns (a, b, gateway)."""
    from kafka_helpers import create_topic

    a = broker_factory(name="cluster-a")
    b = broker_factory(name="cluster-b")
    for cluster in (a, b):
        create_topic(cluster.bootstrap, topic, partitions)
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap, "b": b.bootstrap},
            groups={"both": {"a": 1.0, "b": 1.0}},
            topics={topic: "both"},
            sections=sections,
        )
    )
    return a, b, gw


def read_cluster(bootstrap: str, topic: str, timeout: float = 60.0) -> list[StoredRecord]:
    """Every record of ``topic`` on the cluster at ``bootstrap`` (empty if the topic does not
    exist there)."""
    c = make_consumer(bootstrap)
    try:
        md = c.list_topics(topic, timeout=10)
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return []
        got = consume_partitions(bootstrap, topic, sorted(t.partitions), timeout, consumer=c)
    finally:
        c.close()
    out = []
    for p, msgs in got.items():
        for m in msgs:
            out.append(
                StoredRecord(p, m.offset(), m.key(), m.value(), dict(m.headers() or []))
            )
    return out


def client_sockets_to(port: int) -> dict[int, int]:
    """``{pid: number of established TCP connections to 127.0.0.1:port}`` over all processes
    whose /proc we can read (the client ends of the connections)."""
    inodes: dict[str, int] = {}
    port_hex = f"{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            remote, state, inode = f[2], f[3], f[9]
            if state == "01" and remote.endswith(":" + port_hex):
                inodes[inode] = 0
    counts: dict[int, int] = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                counts[int(pid_dir.name)] = counts.get(int(pid_dir.name), 0) + 1
    return counts


def assert_seq_order(records: Iterable[StoredRecord], what: str) -> None:
    """Values ``<key>:<seq>``: within each partition, every key's seqs increase with offset."""
    last: dict[tuple[int, bytes], tuple[int, int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        key, seq = r.value.rsplit(b":", 1)
        seq_i = int(seq)
        prev = last.get((r.partition, key))
        assert prev is None or prev[0] < seq_i, (
            f"{what}: key {key!r} partition {r.partition}: seq {seq_i} at offset {r.offset} "
            f"after seq {prev[0]} at offset {prev[1]}"
        )
        last[(r.partition, key)] = (seq_i, r.offset)


# --------------------------------------------------------------------------
# Many short-lived client processes (test_gateway_clients.py)
# --------------------------------------------------------------------------


def _client_process(i, messages, topic, started, release, results) -> None:  # pragma: no cover
    """One client process: fjord.publish() with nothing configured but the environment."""
    import fjord

    started.wait()
    out = []
    for j in range(messages):
        value = f"p{i}:{j}"
        d = fjord.publish(topic, value.encode(), key=f"proc-{i}".encode())
        out.append((value, d.cluster, d.partition, d.offset))
    results.put((i, out))
    release.wait()


def many_clients_main(argv: list[str]) -> int:  # pragma: no cover - runs as a subprocess
    """``python gateway_helpers.py PROCESSES MESSAGES TOPIC``: forks PROCESSES client
    processes (from an interpreter that imported fjord but opened no channel), each publishing
    MESSAGES messages with :func:`fjord.publish`. Prints ``READY`` once every process has
    published and still holds its connection, waits for a line on stdin, lets them exit, and
    prints their results as JSON."""
    import json
    import multiprocessing as mp
    import sys

    import fjord  # noqa: F401  (imported once, inherited by the children)

    n, messages, topic = int(argv[0]), int(argv[1]), argv[2]
    ctx = mp.get_context("fork")
    started = ctx.Barrier(n)
    release = ctx.Event()
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_client_process, args=(i, messages, topic, started, release, results))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    collected = {}
    for _ in range(n):
        i, out = results.get(timeout=120)
        collected[i] = out
    print("READY", flush=True)
    sys.stdin.readline()
    release.set()
    for p in procs:
        p.join(60)
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    print(json.dumps({"results": collected, "failed_exits": failed}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(many_clients_main(sys.argv[1:]))
