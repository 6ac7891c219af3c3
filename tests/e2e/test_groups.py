"""Consumer groups with confluent-kafka (librdkafka).

* members join and leave while a producer writes, with the classic protocol and
  with the consumer protocol of KIP-848 (``group.protocol=consumer``); with
  synchronous commits after processing, every record is processed at least
  once and none is skipped; once the group settles, each partition has exactly
  one owner;
* static membership: a member restarted within session.timeout.ms gets its
  partitions back without a rebalance;
* committed offsets and their metadata survive a broker SIGKILL + restart.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from kafka_helpers import create_topic, watermarks

PARTITIONS = 12


class Member(threading.Thread):
    """One group member polling in its own thread, committing synchronously after each batch."""

    def __init__(
        self, bootstrap: str, topic: str, group: str, processed: list, protocol: str = "classic", **conf
    ):
        super().__init__(daemon=True)
        config = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
        if protocol == "consumer":
            # KIP-848: session timeout, heartbeat interval and assignor are the broker's.
            config["group.protocol"] = "consumer"
        else:
            config.update({"session.timeout.ms": 10000, "heartbeat.interval.ms": 500})
        if protocol == "cooperative":
            # The classic protocol with incremental rebalances driven by the clients (KIP-429).
            config["partition.assignment.strategy"] = "cooperative-sticky"
        # The consumer protocol's and cooperative rebalance callbacks are incremental: they name
        # only the partitions added or taken away. Eager ones name the whole assignment.
        self.incremental = protocol in ("consumer", "cooperative")
        config.update(conf)
        self.consumer = Consumer(config)
        self.topic = topic
        self.processed = processed
        self.assigned: set[int] = set()
        self.assign_events = 0
        self.halt = threading.Event()
        self.errors: list = []

    def _on_assign(self, consumer, partitions):
        if self.incremental:
            self.assigned = self.assigned | {p.partition for p in partitions}
        else:
            self.assigned = {p.partition for p in partitions}
        self.assign_events += 1

    def _on_revoke(self, consumer, partitions):
        if self.incremental:
            self.assigned = self.assigned - {p.partition for p in partitions}
        else:
            self.assigned = set()

    def run(self):
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        while not self.halt.is_set():
            msgs = self.consumer.consume(num_messages=200, timeout=0.2)
            batch = []
            for m in msgs:
                if m.error():
                    self.errors.append(m.error())
                    continue
                batch.append((m.partition(), m.offset()))
            if batch:
                self.processed.extend(batch)
                try:
                    self.consumer.commit(asynchronous=False)
                except KafkaException:
                    # A rebalance raced the commit: the records are processed again by the
                    # partition's next owner (at least once), never skipped.
                    pass
        self.consumer.close()

    def stop(self):
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "consumer thread did not stop"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.parametrize("protocol", ["classic", "cooperative", "consumer"])
def test_members_join_and_leave_while_producing(broker_factory, topic, protocol):
    broker = broker_factory(
        "--group-initial-rebalance-delay-ms", "500", "--group-consumer-heartbeat-interval-ms", "1000"
    )
    create_topic(broker.bootstrap, topic, PARTITIONS)
    group = f"{topic}-g"
    processed: list[tuple[int, int]] = []
    total = 20_000

    def produce():
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "enable.idempotence": True})
        for i in range(total):
            while True:
                try:
                    p.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 1000 == 0:
                p.poll(0)
                time.sleep(0.4)  # about 8 s of producing
        assert p.flush(60) == 0

    members = [Member(broker.bootstrap, topic, group, processed, protocol) for _ in range(3)]
    for m in members:
        m.start()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    time.sleep(3)
    members[1].stop()  # leaves the group
    time.sleep(2)
    late = Member(broker.bootstrap, topic, group, processed, protocol)
    late.start()
    live = [members[0], members[2], late]
    producer.join(90)
    assert not producer.is_alive(), "producer did not finish"

    wm = watermarks(broker.bootstrap, topic, range(PARTITIONS))
    assert sum(high for _, high in wm.values()) == total

    def covered():
        seen = set(processed)
        return all((p, o) in seen for p in range(PARTITIONS) for o in range(wm[p][1]))

    wait_for(covered, 90, "every record to be processed")

    def settled():
        owned = [m.assigned for m in live]
        union = set().union(*owned)
        return union == set(range(PARTITIONS)) and sum(len(o) for o in owned) == PARTITIONS

    wait_for(settled, 60, "each partition to have exactly one owner")
    for m in live:
        m.stop()
    seen = set(processed)
    skipped = [(p, o) for p in range(PARTITIONS) for o in range(wm[p][1]) if (p, o) not in seen]
    assert not skipped, f"{len(skipped)} records never processed, e.g. {skipped[:5]}"
    dupes = len(processed) - len(seen)
    print(f"processed {len(processed)} deliveries for {len(seen)} records ({dupes} redeliveries)")


def test_static_member_restart_keeps_partitions_without_rebalance(broker_factory, topic):
    broker = broker_factory("--group-initial-rebalance-delay-ms", "500")
    create_topic(broker.bootstrap, topic, 4)
    group = f"{topic}-static"
    processed: list = []
    a = Member(broker.bootstrap, topic, group, processed, **{"group.instance.id": "a"})
    b = Member(broker.bootstrap, topic, group, processed, **{"group.instance.id": "b"})
    a.start()
    b.start()
    wait_for(lambda: a.assigned and b.assigned and len(a.assigned | b.assigned) == 4, 30, "a stable group")
    time.sleep(1)
    a_events, b_partitions = a.assign_events, set(b.assigned)

    # A static member's close does not leave the group; it comes back within the session timeout.
    b.stop()
    b2 = Member(broker.bootstrap, topic, group, processed, **{"group.instance.id": "b"})
    b2.start()
    wait_for(lambda: b2.assigned, 20, "the restarted member's assignment")
    assert b2.assigned == b_partitions
    time.sleep(2)
    assert a.assign_events == a_events, "the other member went through a rebalance"
    a.stop()
    b2.stop()


def test_committed_offsets_survive_broker_kill(broker, topic):
    create_topic(broker.bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(100):
        p.produce(topic, value=b"%d" % i, partition=i % 2)
    assert p.flush(30) == 0
    group = f"{topic}-durable"

    def consumer():
        return Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})

    c = consumer()
    c.commit(
        offsets=[TopicPartition(topic, 0, 17, metadata="after-17"), TopicPartition(topic, 1, 42)],
        asynchronous=False,
    )
    c.close()

    broker.kill()
    broker.restart()

    c = consumer()
    try:
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=20)
        assert [(tp.partition, tp.offset) for tp in got] == [(0, 17), (1, 42)]
        assert got[0].metadata == "after-17"
        # Consuming resumes from the committed offset.
        c.subscribe([topic])
        first = None
        deadline = time.monotonic() + 30
        while first is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error() and m.partition() == 0:
                first = m.offset()
        assert first == 17
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_cooperative_members_keep_committing_while_others_join(broker_factory, topic):
    """librdkafka consumers with cooperative-sticky and auto-commit keep committing the
    partitions they own while members join (KIP-429). Kafka accepts those commits while the
    group prepares a rebalance; answering REBALANCE_IN_PROGRESS, as Fjord once did, makes
    librdkafka report failed commits on every join."""
    broker = broker_factory("--group-initial-rebalance-delay-ms", "300")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    group = f"{topic}-coop"
    stop = threading.Event()
    commits: list = []
    failures: list = []
    lock = threading.Lock()

    def on_commit(err, partitions):
        with lock:
            if err is not None:
                failures.append(str(err))
            else:
                commits.append(len(partitions))

    def produce():
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, key=b"k%d" % i, value=b"v%d" % i)
                i += 1
            except BufferError:
                p.poll(0.05)
            if i % 50 == 0:
                p.poll(0.01)
        p.flush(30)

    def consume(c: Consumer):
        while not stop.is_set():
            m = c.poll(0.1)
            if m is not None and m.error():
                with lock:
                    failures.append(str(m.error()))
        c.close()

    def member() -> threading.Thread:
        c = Consumer({
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 100,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
            "on_commit": on_commit,
        })
        c.subscribe([topic])
        t = threading.Thread(target=consume, args=(c,), daemon=True)
        t.start()
        return t

    threads = [threading.Thread(target=produce, daemon=True)]
    threads[0].start()
    threads.append(member())
    time.sleep(4)
    for _ in range(3):
        # Each join starts a rebalance that waits up to a heartbeat interval for the others to
        # rejoin: the members go on committing meanwhile.
        threads.append(member())
        time.sleep(3)
    stop.set()
    for t in threads:
        t.join(30)
    rebalance_failures = [f for f in failures if "REBALANCE" in f.upper()]
    print(f"\n{len(commits)} commits, failures: {failures[:10]}")
    assert len(commits) > 20, "the members committed"
    assert not rebalance_failures, f"{len(rebalance_failures)} commits refused: {rebalance_failures[:5]}"
