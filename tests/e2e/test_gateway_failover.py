"""The gateway in front of two Fjord clusters while one of them is SIGKILLed and comes back.

A Python publisher sends at least 50,000 keyed messages through ``fjord gateway``; meanwhile
cluster A is killed, the gateway's breaker for A must open, A is restarted, and the breaker must
close again. Then, from what both clusters hold:

* every message the gateway reported delivered is at the position it reported (checker.py:
  nothing lost, misplaced, duplicated within a cluster or phantom; offsets dense);
* within each cluster, the messages of each key are in publish order;
* across both clusters, sorting a key's messages by their ``fjord-hlc`` header restores the
  publish order (what a consumer does after a failover).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import fjord
import pytest

from checker import Ack, Failed, Read, assert_clean, check
from gateway_helpers import (GatewayProc, gateway_factory, assert_seq_order, read_cluster,  # noqa: F401
                             start_over_two_clusters)

MESSAGES = 50_000
KEYS = 200
BATCH = 250
PARTITIONS = 4
#: Publishing threads, each with its own keys: the kill finds batches in flight.
THREADS = 4


def wait_until(what: str, cond, timeout: float, gw: GatewayProc, interval: float = 0.1) -> float:
    start = time.monotonic()
    while not cond():
        assert gw.running, f"gateway died while waiting for {what}:\n{gw.logs()}"
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}:\n{gw.logs()}"
        time.sleep(interval)
    return time.monotonic() - start


class KeyedPublisher(threading.Thread):
    """Publishes batches of keyed messages ``<key>:<seq>`` until told to stop (and at least
    ``minimum`` were sent); records every result."""

    def __init__(self, address: str, topic: str, minimum: int, keys: range) -> None:
        super().__init__(daemon=True)
        self.keys = keys
        self.pub = fjord.Publisher(address, timeout=20.0, retries=5)
        self.topic = topic
        self.minimum = minimum
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acks: dict[str, list[Ack]] = defaultdict(list)
        self.failed: list[Failed] = []
        self.hlc_of: dict[bytes, int] = {}
        self.sent = 0
        self.delivered = 0
        self.error: BaseException | None = None
        self.seq = {k: 0 for k in keys}

    def run(self) -> None:
        try:
            i = 0
            while not (self.stop.is_set() and self.sent >= self.minimum):
                msgs = []
                for _ in range(BATCH):
                    k = self.keys[i % len(self.keys)]
                    key = f"key-{k}".encode()
                    msgs.append(fjord.Message(key + b":" + str(self.seq[k]).encode(), key=key))
                    self.seq[k] += 1
                    i += 1
                results = self.pub.publish_batch(self.topic, msgs)
                with self.lock:
                    for m, r in zip(msgs, results):
                        if isinstance(r, fjord.Delivered):
                            self.acks[r.cluster].append(
                                Ack(self.topic, r.partition, r.offset, m.key, m.value)
                            )
                            self.hlc_of[m.value] = r.hlc
                            self.delivered += 1
                        else:
                            self.failed.append(Failed(m.key, m.value, r, self.topic))
                    self.sent += len(msgs)
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.pub.close()


@pytest.mark.timeout(240)
def test_sigkill_of_one_cluster_loses_no_delivered_message(broker_factory, gateway_factory, topic):
    a, b, gw = start_over_two_clusters(
        broker_factory, gateway_factory, topic, PARTITIONS,
        {
            "delivery": {"attempt_timeout_ms": 2000, "delivery_timeout_ms": 10000, "max_attempts": 2},
            "breaker": {
                "consecutive_failures": 3,
                "open_ms": 1000,
                "probe_timeout_ms": 500,
                "half_open_successes": 3,
            },
        },
    )
    try:
        per_thread = KEYS // THREADS
        publishers = [
            KeyedPublisher(gw.address, topic, MESSAGES // THREADS, range(t * per_thread, (t + 1) * per_thread))
            for t in range(THREADS)
        ]
        for p in publishers:
            p.start()

        def delivered() -> int:
            for p in publishers:
                assert p.error is None, f"publisher failed: {p.error!r}"
            return sum(p.delivered for p in publishers)

        def delivered_to(cluster: str) -> int:
            return sum(len(p.acks[cluster]) for p in publishers)

        wait_until("10,000 deliveries", lambda: delivered() >= 10_000, 60, gw)
        a.kill()
        killed_at = delivered()
        opened = wait_until(
            "the breaker of A to open",
            lambda: gw.metric("fjord_gateway_breaker_transitions_total", cluster="a", to="open") >= 1,
            20,
            gw,
        )
        # Down longer than the attempt timeout, so what A held when it died times out there
        # and is retried on B.
        down_since = time.monotonic()
        wait_until(
            "5,000 more deliveries without A",
            lambda: delivered() >= killed_at + 5_000 and time.monotonic() - down_since > 3.0,
            60,
            gw,
        )
        a.start()
        closed = wait_until(
            "the breaker of A to close again",
            lambda: gw.metric("fjord_gateway_breaker_transitions_total", cluster="a", to="closed") >= 1
            and gw.metric("fjord_gateway_breaker_state", cluster="a") == 0,
            60,
            gw,
        )
        on_a = delivered_to("a")
        wait_until("deliveries to A again", lambda: delivered_to("a") > on_a + 100, 30, gw)
        for p in publishers:
            p.stop.set()
        for p in publishers:
            p.join(120)
            assert not p.is_alive(), "publisher did not finish"
            assert p.error is None, f"publisher failed: {p.error!r}"
        retries = gw.metric("fjord_gateway_retries_total")
    finally:
        gw.stop()

    acks: dict[str, list[Ack]] = defaultdict(list)
    failed: list[Failed] = []
    hlc_of: dict[bytes, int] = {}
    for p in publishers:
        for cluster, cluster_acks in p.acks.items():
            acks[cluster] += cluster_acks
        failed += p.failed
        hlc_of.update(p.hlc_of)
    sent = sum(p.sent for p in publishers)

    print(
        f"\nsent {sent}, delivered {len(hlc_of)} "
        f"(a {len(acks['a'])}, b {len(acks['b'])}), failed "
        f"{len(failed)}, retried elsewhere {retries:.0f}; breaker opened "
        f"{opened:.2f}s after the kill, closed {closed:.2f}s after the restart"
    )
    assert sent >= MESSAGES
    # The gateway failed over: almost everything was delivered (a message can fail only if
    # both clusters failed it within its deadline).
    assert len(failed) <= sent // 100, failed[:5]

    attempted = {x.value for cluster_acks in acks.values() for x in cluster_acks}
    attempted |= {f.value for f in failed}
    hlc_by_key: dict[bytes, dict[bytes, int]] = defaultdict(dict)
    for name, cluster in (("a", a), ("b", b)):
        records = read_cluster(cluster.bootstrap, topic)
        reads = [Read(topic, r.partition, r.offset, r.key, r.value) for r in records]
        report = check(
            acks[name],
            reads,
            attempted=attempted,
            seq_of=lambda v: (v.rsplit(b":", 1)[0], int(v.rsplit(b":", 1)[1])),
        )
        assert_clean(report)
        assert_seq_order(records, f"cluster {name}")
        for r in records:
            assert r.headers.get("fjord-gateway") == b"gw-e2e", r
            hlc = int(r.headers["fjord-hlc"])
            if r.value in hlc_of:
                assert hlc_of[r.value] == hlc, r
            hlc_by_key[r.key][r.value] = hlc
    # A consumer of both clusters restores each key's publish order by HLC.
    for key, by_value in hlc_by_key.items():
        seqs = [int(v.rsplit(b":", 1)[1]) for v, _ in sorted(by_value.items(), key=lambda kv: kv[1])]
        assert seqs == sorted(seqs), f"HLC order of {key!r} differs from publish order"
