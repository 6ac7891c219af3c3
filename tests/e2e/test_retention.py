"""Retention (retention.ms, retention.bytes) and DeleteRecords end to end, with confluent-kafka
and the `fjord topic trim` command: the low watermark moves, what is below it is gone for
consumers (they reset per auto.offset.reset), what is above it stays readable in order."""

from __future__ import annotations

import subprocess
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigSource,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from confluent_kafka import OFFSET_BEGINNING

from kafka_helpers import admin_client, make_consumer, watermarks

#: Retention passes every half second, so the tests wait seconds, not the 30 s default; garbage
#: collection every second deletes objects half a second after their last row went.
FAST_RETENTION = (
    "--log-retention-check-interval-ms", "500",
    "--gc-interval-secs", "1",
    "--log-segment-delete-delay-ms", "500",
)


def object_bytes(data_dir) -> int:
    """Bytes of the objects under a broker's data dir (the default local object store)."""
    return sum(f.stat().st_size for f in (data_dir / "objects").rglob("*.fjd") if f.is_file())


def create(bootstrap: str, topic: str, partitions: int, **configs: str) -> None:
    admin = admin_client(bootstrap)  # kept alive until the result is in
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, config=configs)])
    futures[topic].result(timeout=30)


def produce(bootstrap: str, topic: str, partition: int, values: list[bytes], timestamp_ms: int | None = None) -> None:
    """Produces `values` to one partition and waits until all are acknowledged (committed)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    errors = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    for v in values:
        if timestamp_ms is None:
            p.produce(topic, value=v, partition=partition, on_delivery=report)
        else:
            p.produce(topic, value=v, partition=partition, timestamp=timestamp_ms, on_delivery=report)
    assert p.flush(30) == 0
    assert not errors, errors


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def read_all(bootstrap: str, topic: str, partitions, timeout: float = 30.0) -> dict[int, list]:
    """Reads every partition from its beginning (its log start) up to its current high
    watermark: ``{partition: [messages in offset order]}``."""
    partitions = list(partitions)
    marks = watermarks(bootstrap, topic, partitions)
    c = make_consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got: dict[int, list] = {p: [] for p in partitions}

        def done(p: int) -> bool:
            low, high = marks[p]
            return low == high or (got[p] and got[p][-1].offset() + 1 >= high)

        deadline = time.monotonic() + timeout
        while not all(done(p) for p in partitions):
            assert time.monotonic() < deadline, f"reading {topic} timed out: {marks}"
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error() is not None:
                    assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                    continue
                got[m.partition()].append(m)
        return got
    finally:
        c.close()


def values(messages) -> list[bytes]:
    return [m.value() for m in messages]


def test_retention_ms_expires_old_data_on_every_partition(broker_factory, topic):
    broker = broker_factory(*FAST_RETENTION)
    create(broker.bootstrap, topic, 3, **{"retention.ms": "4000"})
    now = int(time.time() * 1000)
    # Old records (stamped 3.5 s ago, so they expire within about a second) in their own
    # objects, then fresh ones.
    old = {p: [b"old-%d-%d" % (p, i) for i in range(20 + p)] for p in range(3)}
    fresh = {p: [b"fresh-%d-%d" % (p, i) for i in range(30)] for p in range(3)}
    for p in range(3):
        produce(broker.bootstrap, topic, p, old[p], timestamp_ms=now - 3500)
    for p in range(3):
        produce(broker.bootstrap, topic, p, fresh[p])
    started = time.monotonic()

    def old_gone():
        marks = watermarks(broker.bootstrap, topic, range(3))
        return marks if all(marks[p][0] == len(old[p]) for p in range(3)) else None

    marks = wait_for("the old records to expire", old_gone, timeout=15)
    assert time.monotonic() - started < 15
    assert {p: marks[p][1] for p in range(3)} == {p: len(old[p]) + 30 for p in range(3)}
    # The fresh records are all still readable, in order; none of the old ones is.
    got = read_all(broker.bootstrap, topic, range(3))
    for p in range(3):
        assert values(got[p]) == fresh[p]
        assert [m.offset() for m in got[p]] == list(range(len(old[p]), len(old[p]) + 30))

    # Idle: everything expires, the log start reaches the end on every partition.
    def all_gone():
        marks = watermarks(broker.bootstrap, topic, range(3))
        return marks if all(low == high for low, high in marks.values()) else None

    marks = wait_for("every record to expire", all_gone, timeout=20)
    assert {p: marks[p][0] for p in range(3)} == {p: len(old[p]) + 30 for p in range(3)}
    # Their objects are deleted (file.delete.delay.ms after their last row went).
    wait_for("the objects to be deleted", lambda: object_bytes(broker.data_dir) == 0, timeout=20)
    # The topic goes on: new records get the next offsets and are readable.
    produce(broker.bootstrap, topic, 0, [b"after"])
    got = read_all(broker.bootstrap, topic, [0])
    assert [(m.offset(), m.value()) for m in got[0]] == [(len(old[0]) + 30, b"after")]


def test_retention_bytes_keeps_the_newest_data(broker_factory, topic):
    broker = broker_factory(*FAST_RETENTION)
    create(broker.bootstrap, topic, 2, **{"retention.bytes": "3000"})
    # Ten rounds of 20 records of 100 bytes, each acknowledged before the next (so each is a
    # stored row of about 2.3 kB).
    sent = []
    for r in range(10):
        round_values = [b"%03d-%03d-" % (r, i) + b"x" * 92 for i in range(20)]
        produce(broker.bootstrap, topic, 0, round_values)
        sent.extend(round_values)

    # Kafka's rule: drop the oldest rows while what remains is still at least retention.bytes:
    # two rows (about 4.6 kB) remain; one would be less than 3000 bytes.
    def trimmed():
        marks = watermarks(broker.bootstrap, topic, range(2))
        return marks if marks[0][0] == 160 else None

    written = object_bytes(broker.data_dir)
    assert written > 20_000, written
    marks = wait_for("retention.bytes to trim partition 0", trimmed, timeout=15)
    assert marks == {0: (160, 200), 1: (0, 0)}
    # Objects of the rows that went are deleted; those of the two retained rows stay.
    wait_for("the trimmed objects to be deleted", lambda: object_bytes(broker.data_dir) < 7_000, timeout=20)
    assert object_bytes(broker.data_dir) > 4_000
    time.sleep(1.5)  # a few more passes change nothing
    assert watermarks(broker.bootstrap, topic, range(2)) == marks
    got = read_all(broker.bootstrap, topic, [0])
    assert values(got[0]) == sent[160:]
    assert [m.offset() for m in got[0]] == list(range(160, 200))


def first_message(consumer: Consumer, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            raise AssertionError(f"consume error: {m.error()}")
        return m
    raise AssertionError("no message")


def test_delete_records_moves_the_low_watermark_and_consumers_reset(broker, topic):
    create(broker.bootstrap, topic, 2)
    for p in range(2):
        produce(broker.bootstrap, topic, p, [b"v%d-%d" % (p, i) for i in range(10)])
    admin = admin_client(broker.bootstrap)
    futures = admin.delete_records([TopicPartition(topic, 0, 6), TopicPartition(topic, 1, -1)])
    results = {tp.partition: f.result(timeout=30) for tp, f in futures.items()}
    assert results[0].low_watermark == 6
    assert results[1].low_watermark == 10
    assert watermarks(broker.bootstrap, topic, range(2)) == {0: (6, 10), 1: (10, 10)}

    # Beyond the high watermark: refused.
    futures = admin.delete_records([TopicPartition(topic, 0, 11)])
    try:
        list(futures.values())[0].result(timeout=30)
        raise AssertionError("DeleteRecords beyond the high watermark succeeded")
    except Exception as e:  # KafkaException(OFFSET_OUT_OF_RANGE)
        assert "OFFSET_OUT_OF_RANGE" in str(e) or "out of range" in str(e).lower(), e

    # A consumer positioned below the low watermark is reset per auto.offset.reset.
    earliest = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"{topic}-earliest",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    earliest.assign([TopicPartition(topic, 0, 2)])
    m = first_message(earliest)
    assert (m.offset(), m.value()) == (6, b"v0-6")
    earliest.close()

    latest = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"{topic}-latest",
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
        }
    )
    latest.assign([TopicPartition(topic, 0, 3)])
    # Give it time to fetch, be told OFFSET_OUT_OF_RANGE and reset to the end (nothing there).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        m = latest.poll(0.2)
        assert m is None or m.error() is not None, f"read offset {m.offset()} below the end"
    produce(broker.bootstrap, topic, 0, [b"v0-10"])
    m = first_message(latest)
    assert (m.offset(), m.value()) == (10, b"v0-10")
    latest.close()


def test_topic_trim_command(fjord_bin, broker, topic):
    create(broker.bootstrap, topic, 2)
    produce(broker.bootstrap, topic, 1, [b"%d" % i for i in range(12)])

    def fjord(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(fjord_bin), *args, "--bootstrap", broker.bootstrap],
            capture_output=True,
            text=True,
            timeout=60,
        )

    res = fjord("topic", "trim", topic, "--partition", "1", "--before", "7")
    assert res.returncode == 0, res.stderr
    assert "log start is now 7" in res.stdout
    assert watermarks(broker.bootstrap, topic, range(2)) == {0: (0, 0), 1: (7, 12)}
    out = fjord("topic", "describe", topic).stdout
    rows = {tuple(line.split()) for line in out.splitlines() if line.strip().startswith(("0 ", "1 "))}
    assert ("1", "0", "7", "12") in rows, out
    got = read_all(broker.bootstrap, topic, [1])
    assert [m.value() for m in got[1]] == [b"%d" % i for i in range(7, 12)]

    res = fjord("topic", "trim", topic, "--partition", "1", "--before", "13")
    assert res.returncode != 0 and "OffsetOutOfRange" in res.stderr, res.stderr
    res = fjord("topic", "trim", topic, "--partition", "1", "--before", "-1")
    assert res.returncode == 0, res.stderr
    assert watermarks(broker.bootstrap, topic, [1]) == {1: (12, 12)}


def test_retention_in_a_postgres_cluster_runs_on_one_broker(broker_factory, topic, postgres_db, tmp_path):
    """Two brokers on one PostgreSQL database: the one with the lowest node id runs retention,
    the other serves the moved log start too (ListOffsets and Fetch)."""
    from conftest import free_port
    from kafka_helpers import wait_for_brokers
    from test_metrics import scrape

    shared = ["--coordinator", postgres_db, "--object-store", f"file://{tmp_path / 'objects'}",
              *FAST_RETENTION]
    ports = {1: free_port(), 2: free_port()}
    a = broker_factory(*shared, "--node-id", "1", "--metrics-listen", f"127.0.0.1:{ports[1]}")
    b = broker_factory(*shared, "--node-id", "2", "--metrics-listen", f"127.0.0.1:{ports[2]}")
    wait_for_brokers(a.bootstrap, {1, 2})
    wait_for_brokers(b.bootstrap, {1, 2})
    create(b.bootstrap, topic, 2, **{"retention.ms": "3000"})
    now = int(time.time() * 1000)
    for p in range(2):
        produce(b.bootstrap, topic, p, [b"old-%d" % i for i in range(10)], timestamp_ms=now - 2500)
        produce(b.bootstrap, topic, p, [b"new-%d" % i for i in range(5)])

    def expired():
        marks = watermarks(b.bootstrap, topic, range(2))
        return marks if all(low == 10 for low, _ in marks.values()) else None

    assert wait_for("the old records to expire", expired, timeout=15) == {0: (10, 15), 1: (10, 15)}
    got = read_all(b.bootstrap, topic, range(2))
    for p in range(2):
        assert [m.value() for m in got[p]] == [b"new-%d" % i for i in range(5)]
    duty = {n: scrape(port) for n, port in ports.items()}
    assert duty[1]["fjord_retention_expired_rows_total"] >= 2
    assert duty[2].get("fjord_retention_expired_rows_total", 0) == 0
    assert duty[2].get("fjord_retention_passes_total", 0) == 0

    # Keep the rest from expiring (retention.ms=-1, through the broker that does not run it),
    # then DeleteRecords through the other broker; both answer the new low watermark.
    admin = admin_client(a.bootstrap)
    resource = ConfigResource(
        ResourceType.TOPIC,
        topic,
        incremental_configs=[ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)],
    )
    other = admin_client(b.bootstrap)
    other.incremental_alter_configs([resource])[resource].result(timeout=30)
    done = admin.delete_records([TopicPartition(topic, 0, 12)])
    assert list(done.values())[0].result(timeout=30).low_watermark == 12
    for broker in (a, b):
        assert watermarks(broker.bootstrap, topic, [0]) == {0: (12, 15)}
        assert [m.offset() for m in read_all(broker.bootstrap, topic, [0])[0]] == [12, 13, 14]

    # Once both partitions are emptied, the duty broker deletes every object (the ledger in
    # PostgreSQL says which; file.delete.delay.ms later), and only it does.
    done = admin.delete_records([TopicPartition(topic, 0, -1), TopicPartition(topic, 1, -1)])
    for f in done.values():
        f.result(timeout=30)

    def shared_bytes():
        return sum(f.stat().st_size for f in (tmp_path / "objects").rglob("*.fjd") if f.is_file())

    wait_for("the objects to be deleted", lambda: shared_bytes() == 0, timeout=20)
    duty = {n: scrape(port) for n, port in ports.items()}
    assert duty[1]["fjord_gc_deleted_objects_total"] >= 2
    assert duty[2].get("fjord_gc_deleted_objects_total", 0) == 0


def test_describe_shows_what_is_in_force(fjord_bin, broker_factory, topic):
    """What `fjord topic describe` and DescribeConfigs show is what the broker enforces: a
    broker-wide retention flag appears as the topic's retention.ms (source: broker flag, as Kafka
    reports log.retention.ms), and a stored setting Fjord does not act on (a retention.ms on a
    compact-only topic, segment.bytes) says so instead of looking enforced, while log compaction
    and its segment.ms are shown as in force."""
    broker = broker_factory("--log-retention-ms", "3600000")
    create(broker.bootstrap, topic, 1)
    create(broker.bootstrap, f"{topic}-c", 1, **{"cleanup.policy": "compact", "retention.ms": "1000",
                                                 "segment.ms": "1000", "segment.bytes": "1048576"})

    def describe(name: str) -> dict[str, str]:
        res = subprocess.run([str(fjord_bin), "topic", "describe", name, "--bootstrap", broker.bootstrap],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return {line.split(" = ")[0].strip(): line.split(" = ", 1)[1]
                for line in res.stdout.splitlines() if " = " in line}

    plain = describe(topic)
    assert plain["retention.ms"] == "3600000 (broker flag)", plain
    assert plain["retention.bytes"] == "-1 (default)", plain
    resource = ConfigResource(ResourceType.TOPIC, topic)
    admin = admin_client(broker.bootstrap)  # kept alive until the result is in
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == ConfigSource.STATIC_BROKER_CONFIG.value

    compacted = describe(f"{topic}-c")
    assert compacted["cleanup.policy"] == "compact (set)", compacted
    assert compacted["segment.ms"] == "1000 (set)", compacted
    assert compacted["retention.ms"].startswith("1000 (set; not in force: cleanup.policy has no `delete`"), compacted
    assert compacted["segment.bytes"].startswith("1048576 (set; not in force:"), compacted
