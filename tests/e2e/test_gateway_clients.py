"""200 concurrent Python client processes publish through one gateway; the brokers see only the
gateway's connections.

Each process calls ``fjord.publish`` with nothing configured but ``FJORD_GATEWAY_ADDRESS`` in
its environment (one gRPC connection per process). While all of them hold their connections,
the test reads /proc: the gateway serves 200 client connections, and every connection to the
brokers belongs to the gateway process, a handful per broker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checker import Ack, Read, assert_clean, check
from gateway_helpers import gateway_factory, client_sockets_to, read_cluster  # noqa: F401
from kafka_helpers import create_topic

PROCESSES = 200
MESSAGES_EACH = 10
#: Connections librdkafka may keep to one broker (bootstrap + the broker's own, per thread kind).
MAX_BROKER_CONNECTIONS = 4


@pytest.mark.timeout(180)
def test_200_client_processes_share_the_gateway_connections(broker_factory, gateway_factory, topic):
    a = broker_factory(name="cluster-a")
    b = broker_factory(name="cluster-b")
    for cluster in (a, b):
        create_topic(cluster.bootstrap, topic, 4)
    gw = gateway_factory()
    gw.start(
        gw.config(
            clusters={"a": a.bootstrap, "b": b.bootstrap},
            groups={"both": {"a": 1.0, "b": 1.0}},
            default_group="both",
        )
    )
    env = dict(os.environ, FJORD_GATEWAY_ADDRESS=gw.address)
    helper = Path(__file__).with_name("gateway_helpers.py")
    driver = subprocess.Popen(
        [sys.executable, str(helper), str(PROCESSES), str(MESSAGES_EACH), topic],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=helper.parent,
    )
    try:
        assert driver.stdout is not None and driver.stdin is not None
        line = driver.stdout.readline()
        assert line.strip() == "READY", f"driver said {line!r} (exit {driver.poll()})"
        # Every client process holds its connection now.
        gateway_clients = client_sockets_to(gw.port)
        broker_clients = {c.name: client_sockets_to(c.port) for c in (a, b)}
        driver.stdin.write("go\n")
        driver.stdin.flush()
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    report = json.loads(out)
    assert report["failed_exits"] == [], report["failed_exits"]

    assert driver.pid not in gateway_clients
    assert len(gateway_clients) >= PROCESSES, (
        f"only {len(gateway_clients)} processes connected to the gateway at once"
    )
    gw_pid = gw.proc.pid if gw.proc else None
    for name, clients in broker_clients.items():
        assert set(clients) == {gw_pid}, f"{name}: connections from {clients} (gateway {gw_pid})"
        assert clients[gw_pid] <= MAX_BROKER_CONNECTIONS, f"{name}: {clients}"
    print(
        f"\n{len(gateway_clients)} client processes connected to the gateway; broker connections: "
        + ", ".join(f"{n}: {sum(c.values())}" for n, c in broker_clients.items())
    )
    gw.stop()

    # Every message is where the gateway said, in per-process order.
    acks: dict[str, list[Ack]] = {"a": [], "b": []}
    for i, rows in report["results"].items():
        for value, cluster, partition, offset in rows:
            acks[cluster].append(Ack(topic, partition, offset, f"proc-{i}".encode(), value.encode()))
    assert sum(map(len, acks.values())) == PROCESSES * MESSAGES_EACH
    attempted = {x.value for xs in acks.values() for x in xs}
    for name, cluster in (("a", a), ("b", b)):
        reads = [Read(topic, r.partition, r.offset, r.key, r.value) for r in read_cluster(cluster.bootstrap, topic)]
        assert_clean(
            check(
                acks[name],
                reads,
                attempted=attempted,
                seq_of=lambda v: (v.split(b":")[0], int(v.split(b":")[1])),
            )
        )
