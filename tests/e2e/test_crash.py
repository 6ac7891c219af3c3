"""Durability: no acknowledged record may be lost or duplicated when the
broker is SIGKILLed mid-stream and restarted on the same data directory.

A confluent-kafka producer (idempotent, acks=all) streams records
``b"<partition>:<seq>"`` round-robin into a 3-partition topic from a
background thread.  While it runs, the broker is SIGKILLed and restarted
on the same port; librdkafka reconnects and retries.  Afterwards:

* every acknowledged record is present exactly once, at the offset its
  delivery report gave;
* offsets of each partition are dense from 0;
* values in each partition appear in production order, none twice;
* records whose delivery failed may be absent or present (at most once);
* the producer made progress after the restart and saw no fatal error.

The log is then checked to be unchanged after a second SIGKILL + restart
while idle.  The test runs with the default flush settings and with tiny
flushes (many small objects, so the kill often lands between an upload and
its commit).

``test_graceful_restart_preserves_data`` covers SIGTERM + restart.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from kafka_helpers import (
    DeliveryTracker,
    assert_dense,
    consume_partitions,
    first_difference,
    create_topic,
    flush_all,
    produce_with_backpressure,
    watermarks,
)

PARTITIONS = 3
RUN_SECONDS = 8.0       # total streaming time
KILL_AFTER_S = 2.5      # SIGKILL this long after the stream starts
DOWN_FOR_S = 0.5        # the broker stays down this long
BURST = 20              # records produced between poll(0.01) calls (a few k/s)


class StreamingProducer(threading.Thread):
    """Background thread producing ``b"<p>:<seq>"`` to partition
    ``seq % PARTITIONS`` until :meth:`finish`, then flushing (bounded)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="streaming-producer", daemon=True)
        self.topic = topic
        self.errors: list = []  # error_cb reports (connection errors etc.)
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            "retry.backoff.ms": 100,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": self.errors.append,
        })
        self.dr = DeliveryTracker()
        self.seq = 0
        self._stop_event = threading.Event()
        self.remaining: int | None = None
        self.exc: BaseException | None = None

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                for _ in range(BURST):
                    p = self.seq % PARTITIONS
                    produce_with_backpressure(
                        self.producer, self.topic, partition=p,
                        value=f"{p}:{self.seq}".encode(), on_delivery=self.dr.callback(self.seq),
                    )
                    self.seq += 1
                self.producer.poll(0.01)
            self.remaining = self.producer.flush(60)
        except BaseException as e:  # reported by the test
            self.exc = e

    def finish(self, timeout: float = 90) -> None:
        self._stop_event.set()
        self.join(timeout)
        assert not self.is_alive(), "producer thread did not finish"
        if self.exc is not None:
            raise AssertionError(f"producer thread failed: {self.exc!r}") from self.exc


def parse(value: bytes) -> tuple[int, int]:
    p, seq = value.split(b":")
    return int(p), int(seq)


def read_log(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> dict[int, list[tuple[int, bytes]]]:
    """``{partition: [(offset, value)]}`` of the whole topic."""
    got = consume_partitions(bootstrap, topic, range(partitions))
    return {p: [(m.offset(), m.value()) for m in ms] for p, ms in got.items()}


@pytest.mark.parametrize(
    "broker_args",
    [
        pytest.param([], id="default-flush"),
        # Many tiny objects: kills land between upload and commit far more often.
        pytest.param(["--flush-interval-ms", "1", "--flush-bytes", "4096"],
                     id="tiny-flushes"),
    ],
)
def test_sigkill_loses_no_acknowledged_record(broker_factory, topic, broker_args):
    broker = broker_factory(*broker_args)
    create_topic(broker.bootstrap, topic, PARTITIONS)

    stream = StreamingProducer(broker.bootstrap, topic)
    stream.start()
    try:
        time.sleep(KILL_AFTER_S)
        acked_before_kill = len(stream.dr.ok)
        broker.kill()
        seq_at_kill = stream.seq
        time.sleep(DOWN_FOR_S)
        broker.restart()
        seq_at_restart = stream.seq
        time.sleep(max(0.0, RUN_SECONDS - KILL_AFTER_S - DOWN_FOR_S))
    finally:
        stream.finish()

    fatal = [e for e in stream.errors if e.fatal()]
    assert not fatal, f"producer hit fatal error(s): {fatal}"
    assert stream.remaining == 0, f"{stream.remaining} records still in flight after flush"
    assert acked_before_kill > 0, "nothing was acknowledged before the kill"
    acked_after = [s for s, _, _ in stream.dr.ok if s >= seq_at_restart]
    assert acked_after, "no record produced after the restart was acknowledged"
    print(
        f"produced {stream.seq} (kill at seq {seq_at_kill}, restart at {seq_at_restart}), "
        f"acked {len(stream.dr.ok)}, failed {len(stream.dr.failed)}, "
        f"client errors {len(stream.errors)}"
    )

    log = read_log(broker.bootstrap, topic)
    wm = watermarks(broker.bootstrap, topic, range(PARTITIONS))
    for p in range(PARTITIONS):
        offsets = [o for o, _ in log[p]]
        assert_dense(offsets, f"partition {p}")
        assert wm[p] == (0, len(offsets)), f"partition {p}: watermarks {wm[p]}"
        seqs = []
        for off, value in log[p]:
            vp, seq = parse(value)
            assert vp == p and seq % PARTITIONS == p and seq < stream.seq, (
                f"partition {p} offset {off}: unexpected value {value!r}"
            )
            seqs.append(seq)
        dupes = len(seqs) - len(set(seqs))
        assert dupes == 0, f"partition {p}: {dupes} duplicated records"
        out_of_order = [(a, b) for a, b in zip(seqs, seqs[1:]) if b <= a]
        assert not out_of_order, f"partition {p}: out of production order: {out_of_order[:5]}"

    missing, misplaced = [], []
    for seq, p, off in stream.dr.ok:
        want = f"{p}:{seq}".encode()
        if off >= len(log[p]):
            missing.append((p, off, want))
        elif log[p][off][1] != want:
            misplaced.append((p, off, want, log[p][off][1]))
    assert not missing, f"{len(missing)} acknowledged records lost, first: {missing[:5]}"
    assert not misplaced, f"{len(misplaced)} acknowledged records not at their offset: {misplaced[:5]}"

    # A second crash while idle must not change the log.
    broker.kill()
    broker.restart()
    again = read_log(broker.bootstrap, topic)
    for p in range(PARTITIONS):
        diff = first_difference(again[p], log[p])
        assert diff is None, f"partition {p}: log changed by an idle SIGKILL + restart: {diff}"


def test_graceful_restart_preserves_data(broker, topic):
    """SIGTERM (exit code 0) + restart: records survive and new records
    continue at the next offset."""
    create_topic(broker.bootstrap, topic, 2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "message.timeout.ms": 30000})
    dr = DeliveryTracker()
    for i in range(500):
        produce_with_backpressure(producer, topic, partition=i % 2, value=f"before-{i}".encode(),
                                  on_delivery=dr.callback(i))
    flush_all(producer)
    assert len(dr.ok) == 500 and not dr.failed
    del producer

    broker.stop()  # asserts exit code 0
    broker.start()

    log = read_log(broker.bootstrap, topic, 2)
    for p in range(2):
        want = [(n, f"before-{i}".encode()) for n, i in enumerate(range(p, 500, 2))]
        diff = first_difference(log[p], want)
        assert diff is None, f"partition {p} after graceful restart: {diff}"

    producer2 = Producer({"bootstrap.servers": broker.bootstrap, "message.timeout.ms": 30000})
    dr2 = DeliveryTracker()
    for p in range(2):
        producer2.produce(topic, partition=p, value=b"after", on_delivery=dr2.callback(p))
    flush_all(producer2)
    assert sorted(dr2.ok) == [(0, 0, 250), (1, 1, 250)], dr2.ok

