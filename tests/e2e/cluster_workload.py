"""A steady produce-and-consume workload for the cluster tests.

:class:`Workload` runs one idempotent confluent-kafka producer (a thread,
about ``rate`` records per second, unique values ``p<producer>-<seq>``) and
``consumers`` members of one consumer group (threads, auto-commit) against a
list of brokers, recording everything in a :class:`checker.Recorder`.  A test
starts it, does something nasty to the cluster, and calls :meth:`finish`,
which stops producing, waits until every acknowledged record was consumed and
returns the checker's report plus the longest pauses in acknowledgements and
in consumption.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Sequence

from confluent_kafka import Consumer, Producer

from checker import Recorder, Report, longest_pause


def seq_of(value: bytes) -> tuple[str, int]:
    producer, seq = value.decode().rsplit("-", 1)
    return producer, int(seq)


@dataclass
class Outcome:
    report: Report
    #: Longest time without an acknowledgement while producing (s).
    ack_pause: float
    #: Longest time without a consumed record until everything was consumed (s).
    consume_pause: float
    #: The same two for the worst single partition (what a key's producer or reader sees).
    partition_ack_pause: float
    partition_consume_pause: float
    acked: int

    def describe(self) -> str:
        return (f"{self.acked} records acknowledged; longest pause in acknowledgements "
                f"{self.ack_pause:.2f} s overall, {self.partition_ack_pause:.2f} s on one "
                f"partition; in consumption {self.consume_pause:.2f} s overall, "
                f"{self.partition_consume_pause:.2f} s on one partition; "
                f"{self.report.redelivered} redelivered")


class Workload:
    def __init__(self, bootstraps: Sequence[str], topic: str, group: str, *,
                 rate: int = 300, consumers: int = 2, client_id: str = "cluster-test",
                 consumer_conf: dict | None = None) -> None:
        self.bootstrap = ",".join(bootstraps)
        self.consumer_conf = dict(consumer_conf or {})
        self.topic = topic
        self.group = group
        self.rate = rate
        self.recorder = Recorder()
        self.read_times: list[tuple[float, int]] = []
        self.errors: list[str] = []
        self._produce_stop = threading.Event()
        self._consume_stop = threading.Event()
        self._client_id = client_id
        self._lock = threading.Lock()
        self._consumed: set[bytes] = set()
        self._producer = threading.Thread(target=self._produce, name="producer", daemon=True)
        self._consumers = [
            threading.Thread(target=self._consume, args=(i, self.bootstrap),
                             name=f"consumer{i}", daemon=True)
            for i in range(consumers)
        ]
        self._unflushed = -1

    def start(self) -> "Workload":
        for t in self._consumers:
            t.start()
        self._producer.start()
        return self

    def _produce(self) -> None:
        p = Producer({
            "bootstrap.servers": self.bootstrap,
            "client.id": self._client_id,
            "enable.idempotence": True,
            "linger.ms": 5,
            "topic.metadata.refresh.interval.ms": 5000,
        })
        seq = 0
        started = time.monotonic()
        while not self._produce_stop.is_set():
            due = started + seq / self.rate
            now = time.monotonic()
            if due > now:
                p.poll(min(due - now, 0.05))
                continue
            value = b"p0-%d" % seq
            self.recorder.attempt(value)
            while True:
                try:
                    p.produce(self.topic, key=b"k%d" % (seq % 32), value=value,
                              on_delivery=self.recorder.on_delivery)
                    break
                except BufferError:
                    p.poll(0.1)
            seq += 1
            p.poll(0)
        self._unflushed = p.flush(180)

    def add_consumer(self, bootstrap: str) -> None:
        """Starts one more member of the group, bootstrapped through ``bootstrap`` only (so that
        it asks that broker which broker coordinates the group)."""
        index = len(self._consumers)
        t = threading.Thread(target=self._consume, args=(index, bootstrap),
                             name=f"consumer{index}", daemon=True)
        self._consumers.append(t)
        t.start()

    def _consume(self, index: int, bootstrap: str) -> None:
        session = [0]

        def on_assign(consumer, partitions):
            session[0] += 1

        c = Consumer({
            "bootstrap.servers": bootstrap,
            "client.id": f"{self._client_id}-consumer{index}",
            "group.id": self.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 500,
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "topic.metadata.refresh.interval.ms": 5000,
            **self.consumer_conf,
        })
        c.subscribe([self.topic], on_assign=on_assign)
        try:
            while not self._consume_stop.is_set():
                msg = c.poll(0.2)
                if msg is None:
                    continue
                if msg.error():
                    # Transient errors (a broker went away) are logged by librdkafka and retried.
                    with self._lock:
                        self.errors.append(str(msg.error()))
                    continue
                self.recorder.read(msg, session=(index, session[0]))
                with self._lock:
                    self.read_times.append((time.monotonic(), msg.partition()))
                    self._consumed.add(msg.value())
        finally:
            c.close()

    def acked_count(self) -> int:
        return len(self.recorder.acks)

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.acked_count() < n:
            assert time.monotonic() < deadline, f"only {self.acked_count()} of {n} acknowledged"
            time.sleep(0.1)

    def finish(self, consume_timeout: float = 90.0) -> Outcome:
        produce_end = time.monotonic()
        self._produce_stop.set()
        self._producer.join(200)
        assert not self._producer.is_alive(), "producer did not finish flushing"
        acks = self.recorder.acks
        acked_values = {a.value for a in acks}
        deadline = time.monotonic() + consume_timeout
        while True:
            with self._lock:
                missing = len(acked_values - self._consumed)
            if missing == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        consumed_all = time.monotonic()
        self._consume_stop.set()
        for t in self._consumers:
            t.join(30)
        ack_times = [a.at for a in acks if a.at <= produce_end] + [produce_end]
        with self._lock:
            read_times = [t for t, _ in self.read_times if t <= consumed_all]
            read_by_partition: dict[int, list[float]] = {}
            for t, partition in self.read_times:
                read_by_partition.setdefault(partition, []).append(t)
        ack_by_partition: dict[int, list[float]] = {}
        for a in acks:
            if a.at <= produce_end:
                ack_by_partition.setdefault(a.partition, []).append(a.at)
        outcome = Outcome(
            report=self.recorder.check(seq_of=seq_of),
            ack_pause=longest_pause(ack_times),
            consume_pause=longest_pause(read_times),
            partition_ack_pause=max(map(longest_pause, ack_by_partition.values()), default=0.0),
            partition_consume_pause=max(map(longest_pause, read_by_partition.values()),
                                        default=0.0),
            acked=len(acks),
        )
        assert self._unflushed == 0, f"{self._unflushed} records never delivered"
        return outcome
