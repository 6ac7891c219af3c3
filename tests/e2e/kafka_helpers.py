"""Kafka-level helpers for the end-to-end tests (confluent-kafka based).

Everything here is bounded in time: each helper takes a ``timeout`` and
raises ``AssertionError`` with some progress information when it runs out.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic


def first_difference(got: list, want: list) -> str | None:
    """Describe the first difference between two lists, or None if equal.

    Use instead of ``assert got == want`` for long lists: pytest's own diff
    of thousands of elements is slow and unreadable."""
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"first difference at index {i}: got {g!r:.200}, want {w!r:.200}"
    if len(got) != len(want):
        return f"lengths differ: got {len(got)}, want {len(want)} (equal up to the shorter)"
    return None


def assert_dense(offsets: list[int], what: str) -> None:
    """Assert ``offsets == [0, 1, ..., n-1]``."""
    diff = first_difference(offsets, list(range(len(offsets))))
    assert diff is None, f"{what}: offsets not dense from 0: {diff}"


def admin_client(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1)
    via the CreateTopics API and wait until metadata shows every partition
    with a leader."""
    admin = admin_client(bootstrap)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    futures[topic].result(timeout=timeout)  # raises KafkaException on error
    wait_for_topic(bootstrap, topic, partitions, timeout=timeout, admin=admin)


def wait_for_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    timeout: float = 30.0,
    admin: AdminClient | None = None,
) -> None:
    """Wait until metadata lists ``topic`` with exactly ``partitions``
    partitions, each having a leader and no error."""
    admin = admin or admin_client(bootstrap)
    deadline = time.monotonic() + timeout
    last = "no metadata yet"
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(topic=topic, timeout=5)
        except KafkaException as e:
            last = f"list_topics failed: {e}"
            time.sleep(0.2)
            continue
        t = md.topics.get(topic)
        if t is None:
            last = "topic missing from metadata"
        elif t.error is not None:
            last = f"topic error {t.error}"
        elif len(t.partitions) != partitions:
            last = f"{len(t.partitions)} partitions, want {partitions}"
        elif any(p.error is not None or p.leader < 0 for p in t.partitions.values()):
            last = "partition without leader: " + ", ".join(
                f"{p.id}: leader={p.leader} err={p.error}" for p in t.partitions.values()
            )
        else:
            return
        time.sleep(0.2)
    raise AssertionError(f"topic {topic!r} not ready within {timeout}s: {last}")


def broker_ids(bootstrap: str, timeout: float = 10.0) -> set[int]:
    """Node ids of the brokers that ``bootstrap``'s Metadata lists."""
    md = admin_client(bootstrap).list_topics(timeout=timeout)
    return set(md.brokers)


def wait_for_brokers(bootstrap: str, expected: set[int], timeout: float = 30.0) -> float:
    """Wait until Metadata from ``bootstrap`` lists exactly the brokers ``expected``; return
    how many seconds that took."""
    start = time.monotonic()
    seen: set[int] = set()
    while time.monotonic() - start < timeout:
        try:
            seen = broker_ids(bootstrap, timeout=5.0)
        except KafkaException:
            seen = set()
        if seen == expected:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"Metadata from {bootstrap} lists brokers {sorted(seen)}, "
                         f"not {sorted(expected)}, after {timeout:.0f}s")


def make_consumer(bootstrap: str, **overrides) -> Consumer:
    """A consumer meant for ``assign()``: no auto commit, EOF events on,
    CRC checks on.  ``group.id`` is set only because librdkafka requires it;
    the tests never subscribe or commit."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"fjord-e2e-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "check.crcs": True,
        "socket.timeout.ms": 10000,
    }
    conf.update(overrides)
    return Consumer(conf)


def watermarks(bootstrap: str, topic: str, partitions: Iterable[int], timeout: float = 10.0):
    """``{partition: (low, high)}`` as reported by ListOffsets."""
    c = make_consumer(bootstrap)
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)
            for p in partitions
        }
    finally:
        c.close()


def consume_partitions(
    bootstrap: str,
    topic: str,
    partitions: Iterable[int],
    timeout: float = 60.0,
    consumer: Consumer | None = None,
) -> dict[int, list[Message]]:
    """Read every partition from its beginning up to its current high
    watermark and return ``{partition: [messages in offset order]}``.

    The high watermarks are read once at the start (via ListOffsets); the
    function then consumes until every partition has reached its high
    watermark and reported end-of-partition.  Nothing may be producing to
    the topic meanwhile.
    """
    partitions = list(partitions)
    own = consumer is None
    c = consumer or make_consumer(bootstrap)
    try:
        high = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in partitions
        }
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: dict[int, list[Message]] = {p: [] for p in partitions}
        eof: set[int] = set()
        deadline = time.monotonic() + timeout

        def done() -> bool:
            return all(p in eof and len(got[p]) >= high[p] for p in partitions)

        while not done():
            if time.monotonic() > deadline:
                progress = {p: f"{len(got[p])}/{high[p]} eof={p in eof}" for p in partitions}
                raise AssertionError(
                    f"consuming {topic!r} timed out after {timeout}s: {progress}"
                )
            for m in c.consume(num_messages=1000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                        continue
                    raise AssertionError(f"consume error on {topic!r}: {err}")
                got[m.partition()].append(m)
                eof.discard(m.partition())
        return got
    finally:
        if own:
            c.close()


@dataclass
class DeliveryTracker:
    """Collects confluent-kafka delivery reports.

    ``callback(tag)`` returns an ``on_delivery`` callback that records
    ``(tag, partition, offset)`` on success or ``(tag, error)`` on failure.
    """

    ok: list[tuple[object, int, int]] = field(default_factory=list)
    failed: list[tuple[object, KafkaError]] = field(default_factory=list)

    def callback(self, tag: object) -> Callable[[KafkaError | None, Message], None]:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.ok.append((tag, msg.partition(), msg.offset()))
            else:
                self.failed.append((tag, err))

        return on_delivery


def produce_with_backpressure(producer: Producer, topic: str, **kwargs) -> None:
    """``producer.produce`` that waits (bounded) while the local queue is
    full instead of raising ``BufferError``."""
    deadline = time.monotonic() + 60
    while True:
        try:
            producer.produce(topic, **kwargs)
            break
        except BufferError:
            if time.monotonic() > deadline:
                raise
            producer.poll(0.05)
    producer.poll(0)


def flush_all(producer: Producer, timeout: float = 60.0) -> None:
    """Flush and assert that nothing is left undelivered."""
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s flush"
