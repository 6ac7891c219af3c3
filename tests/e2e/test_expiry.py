"""Bounded metadata end to end, with confluent-kafka, on the embedded and the PostgreSQL
coordinator: committed offsets of empty consumer groups expire (offsets.retention.minutes, here
--offsets-retention-ms), those of a group with members stay; an idempotent producer's state
expires (producer.id.expiration.ms) and the producer goes on without losing, duplicating or
reordering anything."""

from __future__ import annotations

import time

import pytest

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka import OFFSET_INVALID

from conftest import free_port
from kafka_helpers import admin_client, consume_partitions, create_topic
from test_metrics import scrape
from test_retention import produce, wait_for

#: Offsets expire 3 s after their group became empty (or after their commit, for a group that
#: never had members); passes run twice a second.
FAST_OFFSETS = (
    "--offsets-retention-ms", "3000",
    "--offsets-retention-check-interval-ms", "500",
)


@pytest.fixture(params=["embedded", "postgres"])
def coordinator_args(request) -> tuple[str, ...]:
    """Broker arguments selecting the coordinator (a fresh PostgreSQL database for postgres)."""
    if request.param == "embedded":
        return ()
    return ("--coordinator", request.getfixturevalue("postgres_db"))


def committed(bootstrap: str, group: str, topic: str, partition: int = 0) -> int:
    """The group's committed offset for one partition, as AdminClient lists it
    (OFFSET_INVALID when there is none)."""
    admin = admin_client(bootstrap)
    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, partition)])
    result = admin.list_consumer_group_offsets([request])[group].result(timeout=30)
    return result.topic_partitions[0].offset


def group_ids(bootstrap: str) -> set[str]:
    admin = admin_client(bootstrap)
    listed = admin.list_consumer_groups().result(timeout=30)
    return {g.group_id for g in listed.valid}


def subscribed_consumer(bootstrap: str, group: str, topic: str, want: int) -> Consumer:
    """A consumer of `group` subscribed to `topic` that has read `want` records and committed."""
    c = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
    })
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 30
    while got < want:
        assert time.monotonic() < deadline, f"{group} read only {got} of {want}"
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
    c.commit(asynchronous=False)
    return c


def test_offsets_of_empty_groups_expire_and_groups_with_members_keep_theirs(
    broker_factory, topic, coordinator_args
):
    broker = broker_factory(*coordinator_args, *FAST_OFFSETS)
    create_topic(broker.bootstrap, topic, 1)
    produce(broker.bootstrap, topic, 0, [b"v%d" % i for i in range(10)])

    # "left": commits, then its only member leaves (the group becomes Empty).
    left = subscribed_consumer(broker.bootstrap, "left", topic, 10)
    # "busy": commits and keeps its member for the whole test.
    busy = subscribed_consumer(broker.bootstrap, "busy", topic, 10)
    # "solo": assign() and commit, never a member (kcat/standalone style).
    solo = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "solo",
                     "enable.auto.commit": False})
    solo.commit(offsets=[TopicPartition(topic, 0, 7)], asynchronous=False)
    solo.close()
    try:
        left.close()
        assert committed(broker.bootstrap, "left", topic) == 10
        assert committed(broker.bootstrap, "solo", topic) == 7
        assert {"left", "busy", "solo"} <= group_ids(broker.bootstrap)
        started = time.monotonic()

        wait_for("the empty group's offsets to expire",
                 lambda: committed(broker.bootstrap, "left", topic) == OFFSET_INVALID)
        wait_for("the standalone group's offsets to expire",
                 lambda: committed(broker.bootstrap, "solo", topic) == OFFSET_INVALID)
        # Not before the retention (3 s after the commit at the earliest).
        assert time.monotonic() - started > 2.0
        # Empty groups with nothing left are gone; the group with a member keeps its offset,
        # however long past the retention.
        wait_for("the expired groups to be deleted",
                 lambda: not ({"left", "solo"} & group_ids(broker.bootstrap)))
        time.sleep(3)
        busy.poll(0.1)
        assert committed(broker.bootstrap, "busy", topic) == 10
        assert "busy" in group_ids(broker.bootstrap)
    finally:
        busy.close()

    # A new member of the expired group starts from auto.offset.reset, not from offset 10.
    again = Consumer({
        "bootstrap.servers": broker.bootstrap,
        "group.id": "left",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        again.subscribe([topic])
        deadline = time.monotonic() + 30
        first = None
        while first is None:
            assert time.monotonic() < deadline, "no record for the new member"
            m = again.poll(0.5)
            if m is not None and m.error() is None:
                first = m
        assert first.offset() == 0
    finally:
        again.close()


def test_idempotent_producer_goes_on_after_its_state_expires(
    broker_factory, topic, coordinator_args
):
    port = free_port()
    broker = broker_factory(
        *coordinator_args,
        "--metrics-listen", f"127.0.0.1:{port}",
        "--producer-id-expiration-ms", "2000",
        "--producer-id-expiration-check-interval-ms", "500",
    )
    create_topic(broker.bootstrap, topic, 2)
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    def send(prefix: str, n: int) -> None:
        for i in range(n):
            for partition in (0, 1):
                p.produce(topic, value=b"%s-%d-%d" % (prefix.encode(), partition, i),
                          partition=partition, on_delivery=report)
        assert p.flush(30) == 0
        assert not errors, errors

    send("before", 50)
    # The producer idles past its expiration: the broker forgets its sequences on both
    # partitions, and its id.
    wait_for(
        "the producer state to expire",
        lambda: scrape(port).get("fjord_expired_producer_states_total", 0) >= 2
        and scrape(port).get("fjord_expired_producers_total", 0) >= 1,
    )
    # It goes on: the broker answers its next sequence UNKNOWN_PRODUCER_ID, the client bumps
    # its epoch (or gets a new id) and starts over at sequence 0, and nothing is lost or doubled.
    send("after", 50)
    send("again", 10)
    got = consume_partitions(broker.bootstrap, topic, [0, 1])
    for partition in (0, 1):
        values = [m.value() for m in got[partition]]
        want = ([b"before-%d-%d" % (partition, i) for i in range(50)]
                + [b"after-%d-%d" % (partition, i) for i in range(50)]
                + [b"again-%d-%d" % (partition, i) for i in range(10)])
        assert values == want, (partition, len(values))
