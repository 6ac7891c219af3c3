"""Cluster mode: several stateless brokers on one PostgreSQL database and one S3 bucket.

Needs ``FJORD_TEST_POSTGRES_URL`` / ``FJORD_PG_DIR`` (scripts/test.sh starts a
throwaway server) and moto's S3 server (tests/requirements.txt).  Every test
gets its own database, bucket and brokers.

- Metadata lists the live brokers and spreads partition leaders evenly; zone
  hints in client.id keep clients in their zone; client.rack consumers are sent
  to their zone's broker with KIP-392 preferred read replicas; FindCoordinator
  agrees on every broker.
- A broker SIGKILLed under a produce/consume workload, a PostgreSQL restart
  and an S3 outage of ten seconds lose nothing (tests/checker.py); the longest
  pauses in acknowledgements and consumption are printed.
- A fourth broker added live is used after a metadata refresh, without any
  record bytes being copied for it.
"""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from checker import assert_clean
from cluster_workload import Workload
from conftest import S3_BUCKET, restart_postgres, use_s3
from kafka_helpers import create_topic, wait_for_brokers

PARTITIONS = 6


def start_cluster(broker_factory, postgres_db, n, *, zones=None, extra=()):
    """n brokers on one database and bucket prefix (S3 set up by the caller)."""
    brokers = []
    for i in range(n):
        args = ["--coordinator", postgres_db, "--object-store", f"s3://{S3_BUCKET}/cluster",
                "--node-id", str(i), *extra]
        if zones:
            args += ["--zone", zones[i]]
        brokers.append(broker_factory(*args, name=f"broker{i}"))
    for b in brokers:
        wait_for_brokers(b.bootstrap, set(range(n)))
    return brokers


def leaders(bootstrap, topic, client_id="test"):
    admin = AdminClient({"bootstrap.servers": bootstrap, "client.id": client_id})
    md = admin.list_topics(topic, timeout=10)
    return {p: part.leader for p, part in md.topics[topic].partitions.items()}


def coordinator_of(bootstrap, group):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    [future] = admin.describe_consumer_groups([group], request_timeout=10).values()
    return future.result(timeout=15).coordinator.id


def read_all_with_placement(bootstrap, topic, n, extra=None):
    """Consume ``topic`` from the start in a new group until ``n`` records are read; return the
    values and, from librdkafka's statistics, which partitions it fetched from which broker."""
    stats = []
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{uuid.uuid4()}",
                  "auto.offset.reset": "earliest", "statistics.interval.ms": 500,
                  "stats_cb": stats.append, **(extra or {})})
    c.subscribe([topic])
    got = set()
    deadline = time.monotonic() + 45
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.add(m.value())
    time.sleep(1.5)  # one more statistics interval, after the last fetch
    c.poll(0.5)
    c.close()
    last = json.loads(stats[-1])
    fetching = {
        b["nodeid"]: sorted(tp["partition"] for tp in b.get("toppars", {}).values()
                            if tp["topic"] == topic)
        for b in last["brokers"].values() if b.get("nodeid", -1) >= 0 and b.get("state") == "UP"
    }
    return got, fetching


def bucket_keys(s3):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    url, client = s3_endpoint
    use_s3(monkeypatch, url)
    return client


@pytest.mark.timeout(120)
def test_placement_zones_and_coordinators(broker_factory, postgres_db, s3, topic):
    brokers = start_cluster(broker_factory, postgres_db, 3, zones=["a", "a", "b"])
    create_topic(brokers[0].bootstrap, topic, 12)

    # Without a zone: every broker leads 4 of 12, and every broker says the same.
    plain = leaders(brokers[0].bootstrap, topic)
    assert sorted(list(plain.values()).count(n) for n in range(3)) == [4, 4, 4], plain
    for b in brokers[1:]:
        assert leaders(b.bootstrap, topic) == plain
    # Zone hints in client.id keep clients in their zone, spread within it.
    in_a = leaders(brokers[2].bootstrap, topic, client_id="svc,zone=a")
    assert sorted(list(in_a.values()).count(n) for n in (0, 1)) == [6, 6], in_a
    assert set(leaders(brokers[0].bootstrap, topic, client_id="svc,ws_az=b").values()) == {2}
    assert set(leaders(brokers[0].bootstrap, topic, client_id="diskless_az=b").values()) == {2}

    # Group coordinators: the same answer from every broker, spread over brokers.
    groups = [f"g-{i}" for i in range(12)]
    placed = {g: coordinator_of(brokers[0].bootstrap, g) for g in groups}
    assert len(set(placed.values())) >= 2, placed
    for b in brokers[1:]:
        for g in groups[:4]:
            assert coordinator_of(b.bootstrap, g) == placed[g]

    # A consumer with client.rack=b bootstrapped in zone a fetches every partition from broker 2
    # (KIP-392 preferred read replica), and reads everything.
    p = Producer({"bootstrap.servers": brokers[0].bootstrap, "enable.idempotence": True})
    for i in range(600):
        p.produce(topic, key=b"%d" % i, value=b"v%d" % i)
    assert p.flush(30) == 0
    got, fetching = read_all_with_placement(brokers[0].bootstrap, topic, 600, {"client.rack": "b"})
    assert len(got) == 600
    assert fetching.get(2) == list(range(12)), fetching


@pytest.mark.timeout(240)
def test_broker_sigkill_under_load_loses_nothing(broker_factory, postgres_db, s3, topic):
    brokers = start_cluster(broker_factory, postgres_db, 3)
    create_topic(brokers[0].bootstrap, topic, PARTITIONS)
    group = f"group-{uuid.uuid4().hex[:8]}"
    # Kill the broker that coordinates the group (and leads some partitions).
    victim = brokers[coordinator_of(brokers[0].bootstrap, group)]
    work = Workload([b.bootstrap for b in brokers], topic, group).start()
    work.wait_acked(1500)
    victim.kill()
    survivors = [b for b in brokers if b is not victim]
    took = wait_for_brokers(survivors[0].bootstrap, {int(b.name[-1]) for b in survivors})
    work.wait_acked(work.acked_count() + 1500, timeout=60)
    outcome = work.finish()
    print(f"\nSIGKILL of {victim.name}: dead broker left Metadata after {took:.1f} s; "
          f"{outcome.describe()}")
    assert_clean(outcome.report)
    # The survivors notice the dead broker by probing it, not by its lease: producers of its
    # partitions move within a second.
    assert outcome.partition_ack_pause <= 1.0, outcome.describe()
    # The group moved: its new coordinator is alive.
    assert coordinator_of(survivors[0].bootstrap, group) != int(victim.name[-1])


@pytest.mark.timeout(240)
def test_postgres_restart_during_produce(broker_factory, postgres_db, s3, topic):
    brokers = start_cluster(broker_factory, postgres_db, 3)
    create_topic(brokers[0].bootstrap, topic, PARTITIONS)
    work = Workload([b.bootstrap for b in brokers], topic, f"group-{uuid.uuid4().hex[:8]}").start()
    work.wait_acked(1000)
    restart_postgres(down_seconds=3)
    work.wait_acked(work.acked_count() + 2000, timeout=90)
    outcome = work.finish()
    print(f"\nPostgreSQL down 3 s and restarted: {outcome.describe()}")
    assert_clean(outcome.report)
    for b in brokers:
        assert b.running
        wait_for_brokers(b.bootstrap, {0, 1, 2})


@pytest.mark.timeout(240)
def test_s3_unavailable_for_ten_seconds(broker_factory, postgres_db, faulty_s3, monkeypatch, topic):
    use_s3(monkeypatch, faulty_s3.url)
    brokers = start_cluster(broker_factory, postgres_db, 3)
    create_topic(brokers[0].bootstrap, topic, PARTITIONS)
    work = Workload([b.bootstrap for b in brokers], topic, f"group-{uuid.uuid4().hex[:8]}").start()
    work.wait_acked(1000)
    faulty_s3.proxy.down(10)
    time.sleep(10)
    work.wait_acked(work.acked_count() + 1500, timeout=90)
    outcome = work.finish()
    print(f"\nS3 unreachable for 10 s: {outcome.describe()}; proxy {faulty_s3.proxy.stats()}")
    assert_clean(outcome.report)
    assert outcome.ack_pause >= 5, "the outage did not stall acknowledgements: was S3 really down?"


@pytest.mark.timeout(180)
def test_fourth_broker_added_live(broker_factory, postgres_db, s3, topic):
    brokers = start_cluster(broker_factory, postgres_db, 3)
    create_topic(brokers[0].bootstrap, topic, 8)
    p = Producer({"bootstrap.servers": brokers[0].bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    for i in range(2000):
        p.produce(topic, key=b"%d" % i, value=b"v%d" % i)
    assert p.flush(30) == 0
    before = bucket_keys(s3)

    fourth = broker_factory("--coordinator", postgres_db, "--object-store",
                            f"s3://{S3_BUCKET}/cluster", name="broker3")
    for b in [*brokers, fourth]:
        wait_for_brokers(b.bootstrap, {0, 1, 2, 3})
    led = [p for p, leader in leaders(brokers[0].bootstrap, topic).items() if leader == 3]
    assert len(led) == 2, "the new broker leads its share of the partitions"
    # No record bytes were copied for it.
    time.sleep(2)
    assert bucket_keys(s3) == before

    # A consumer bootstrapped elsewhere reads the new broker's partitions from it.
    got, fetching = read_all_with_placement(brokers[0].bootstrap, topic, 2000)
    assert len(got) == 2000
    assert fetching.get(3) == sorted(led), (fetching, led)


@pytest.mark.timeout(120)
def test_commits_wake_long_polls_on_other_brokers(broker_factory, postgres_db, s3, topic):
    """A consumer long-polling on one broker sees records committed by another promptly (LISTEN/
    NOTIFY), not when its fetch.wait.max.ms runs out."""
    brokers = start_cluster(broker_factory, postgres_db, 2, zones=["a", "b"])
    create_topic(brokers[0].bootstrap, topic, 1)
    assert set(leaders(brokers[0].bootstrap, topic, client_id="p,zone=a").values()) == {0}
    assert set(leaders(brokers[0].bootstrap, topic, client_id="c,zone=b").values()) == {1}
    c = Consumer({"bootstrap.servers": brokers[1].bootstrap, "client.id": "c,zone=b",
                  "group.id": f"g-{uuid.uuid4()}", "auto.offset.reset": "latest",
                  "fetch.wait.max.ms": 10000, "fetch.min.bytes": 1})
    c.subscribe([topic])
    deadline = time.monotonic() + 30
    while not c.assignment():
        assert time.monotonic() < deadline, "no assignment"
        c.poll(0.2)
    # Let the consumer reach the end of the (empty) log and start long-polling.
    c.poll(2)
    p = Producer({"bootstrap.servers": brokers[0].bootstrap, "client.id": "p,zone=a",
                  "linger.ms": 0})
    latencies = []
    for i in range(10):
        sent = time.monotonic()
        p.produce(topic, value=b"%d" % i)
        assert p.flush(10) == 0
        while True:
            m = c.poll(0.05)
            assert time.monotonic() - sent < 15, f"record {i} not consumed"
            if m is not None and not m.error():
                latencies.append(time.monotonic() - sent)
                break
    c.close()
    latencies.sort()
    print(f"\nproduce on broker 0 -> consume on broker 1: median {latencies[5] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    # Without wake-ups each record would wait out the 10 s long poll.
    assert latencies[5] < 1.0, latencies


@pytest.mark.timeout(120)
def test_broker_whose_node_id_was_taken_stops(broker_factory, postgres_db, s3):
    """A broker frozen past its lease (here SIGSTOP; in life a long partition from PostgreSQL)
    whose node id a new broker took meanwhile must not serve under the same id: it stops."""
    args = ["--coordinator", postgres_db, "--object-store", f"s3://{S3_BUCKET}/cluster",
            "--broker-lease-ms", "1000"]
    a = broker_factory(*args, name="frozen")
    wait_for_brokers(a.bootstrap, {0})
    a.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
        b = broker_factory(*args, name="newcomer")
        wait_for_brokers(b.bootstrap, {0})  # b took node id 0
    finally:
        a.proc.send_signal(signal.SIGCONT)
    rc = a.proc.wait(timeout=30)
    a.proc = None
    assert rc != 0
    assert "lost its place in the cluster" in a.stderr_path.read_text()
    assert b.running
    wait_for_brokers(b.bootstrap, {0})


# --------------------------------------------------------------------------------------------
# A view-change race for a consumer group: two brokers both believe they coordinate it.
# --------------------------------------------------------------------------------------------

MASK64 = (1 << 64) - 1


def _fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def _mix(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def group_coordinator(group: str, node_ids: list[int]) -> int:
    """The broker coordinating ``group`` among live ``node_ids``: rendezvous hashing as in
    crates/fjord-broker/src/cluster/mod.rs (``ClusterView::group_coordinator``)."""
    key = _fnv1a(group.encode())
    return max(node_ids, key=lambda n: (_mix(key ^ _mix(n & 0xFFFFFFFF)), n))


AUDIT_SQL = """
CREATE SEQUENCE audit_order;
CREATE TABLE audit_groups (n bigint PRIMARY KEY DEFAULT nextval('audit_order'), group_id bytea,
                           state bytea);
CREATE FUNCTION audit_groups_f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit_groups (group_id, state) VALUES (NEW.group_id, NEW.state); RETURN NEW; END
$$;
CREATE TRIGGER audit_groups_t AFTER INSERT OR UPDATE ON fjord_groups
    FOR EACH ROW EXECUTE FUNCTION audit_groups_f();
CREATE TABLE audit_offsets (n bigint PRIMARY KEY DEFAULT nextval('audit_order'), group_id bytea,
                            topic bytea, partition int, committed_offset bigint);
CREATE FUNCTION audit_offsets_f() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_offsets (group_id, topic, partition, committed_offset)
    VALUES (NEW.group_id, NEW.topic, NEW.partition, NEW.committed_offset);
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_offsets_t AFTER INSERT OR UPDATE ON fjord_group_offsets
    FOR EACH ROW EXECUTE FUNCTION audit_offsets_f();
"""
"""Audit triggers: every save of a group blob and every write of a committed offset, numbered
from one sequence. A group's saves and its fenced offset writes are serialized in the store
(saves hold the group's lock exclusively, fenced writes shared; see
crates/fjord-coordinator/src/postgres/groups.rs), so the numbers order each offset write against
the saves of its group as they happened."""


def _assigned_partitions(assignment: bytes) -> set[tuple[str, int]]:
    """The topic-partitions of a ConsumerProtocolAssignment (any version: they all start with
    version, then [topic, [partition]])."""
    import struct
    if len(assignment) < 6:
        return set()
    pos = 2
    (n_topics,) = struct.unpack_from(">i", assignment, pos)
    pos += 4
    out = set()
    for _ in range(max(n_topics, 0)):
        (name_len,) = struct.unpack_from(">h", assignment, pos)
        pos += 2
        topic = assignment[pos:pos + name_len].decode()
        pos += name_len
        (n_parts,) = struct.unpack_from(">i", assignment, pos)
        pos += 4
        for _ in range(max(n_parts, 0)):
            (p,) = struct.unpack_from(">i", assignment, pos)
            pos += 4
            out.add((topic, p))
    return out


def find_coordinator_at(port: int, group: str) -> int:
    """The node id that the broker on ``port`` itself names as ``group``'s coordinator (a raw
    FindCoordinator v0 to that broker, as a client whose only connection is to it asks)."""
    import socket
    import struct

    def string(s: str) -> bytes:
        return struct.pack(">h", len(s.encode())) + s.encode()

    frame = struct.pack(">hhi", 10, 0, 1) + string("race-test") + string(group)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        head = sock.recv(4)
        (size,) = struct.unpack(">i", head)
        body = b""
        while len(body) < size:
            body += sock.recv(size - len(body))
    _cid, error, node_id = struct.unpack_from(">ihi", body, 0)
    assert error == 0, error
    return node_id


def audit_owners_per_generation(postgres_db: str, group: str) -> dict[int, dict]:
    """For each generation saved Stable, partition -> the set of members it was assigned to,
    over every save of the group."""
    from conftest import psql
    rows = psql(postgres_db, "SELECT convert_from(state, 'UTF8') FROM audit_groups "
                f"WHERE group_id = convert_to('{group}', 'UTF8') ORDER BY n")
    owners: dict[int, dict] = {}
    for line in rows.splitlines():
        snapshot = json.loads(line)
        if "generation" not in snapshot or not snapshot.get("members"):
            continue
        per = owners.setdefault(snapshot["generation"], {})
        for m in snapshot["members"]:
            for tp in _assigned_partitions(bytes(m["assignment"])):
                per.setdefault(tp, set()).add(m["id"])
    return owners


def audit_offsets_backwards(postgres_db: str, group: str) -> tuple[list[tuple], list[tuple]]:
    """Committed offsets of the group that went backwards, in store order, split in two:

    - ``across``: an offset lower than where its partition stood when the group's current
      generation was first stored. Kafka's classic coordinator never allows this: once a new
      generation exists, a commit carrying an older one is refused (ILLEGAL_GENERATION,
      UNKNOWN_MEMBER_ID), and the partition's new owner starts from the offset committed then
      and commits only positions from there on. One is what a stale coordinator would cause by
      accepting an old owner's commit after the new owner took the partition.
    - ``within``: an offset lower than the one before it, but not below that floor. Kafka allows
      these: OffsetCommit is last-writer-wins with no monotonicity check, and a member's commits
      of one generation can arrive out of order when its coordinator changes under it:
      librdkafka retries a commit that failed with a transport error or NOT_COORDINATOR, or
      defers it until a coordinator is found, with the offsets it had then, while the commit it
      makes on revoking its partitions (REBALANCE_IN_PROGRESS from the new coordinator, which a
      generation-current commit may still reach while the group prepares a rebalance) carries
      newer ones.

    Each entry is ``((topic, partition), previous or floor, offset)``."""
    from conftest import psql
    where = f"WHERE group_id = convert_to('{group}', 'UTF8')"
    events: list[tuple[int, object]] = []
    for line in psql(postgres_db, f"SELECT n, convert_from(state, 'UTF8') FROM audit_groups "
                     f"{where}").splitlines():
        n, state = line.split("|", 1)
        generation = json.loads(state).get("generation")
        if generation is not None:
            events.append((int(n), generation))
    for line in psql(postgres_db, "SELECT n, convert_from(topic, 'UTF8'), partition, "
                     f"committed_offset FROM audit_offsets {where}").splitlines():
        n, topic, partition, offset = line.rsplit("|", 3)
        events.append((int(n), ((topic, int(partition)), int(offset))))
    events.sort(key=lambda e: e[0])
    generation = None
    last: dict[tuple, int] = {}
    floor: dict[tuple, int] = {}
    across: list[tuple] = []
    within: list[tuple] = []
    for _, event in events:
        if isinstance(event, int):
            if generation is None or event > generation:
                generation = event
                floor = dict(last)
            continue
        key, offset = event
        if key in floor and offset < floor[key]:
            across.append((key, floor[key], offset))
        elif key in last and offset < last[key]:
            within.append((key, last[key], offset))
        last[key] = offset
    return across, within


@pytest.mark.timeout(300)
def test_group_view_change_race(broker_factory, postgres_db, s3, topic):
    """Two brokers believe they coordinate one consumer group for several seconds: broker 1
    refreshes its view of the cluster only every 2 minutes (a long lease), so it does not see
    broker 3 join and take the group over. Members find the coordinator through either, and each
    side starts a rebalance. Then broker 1 is SIGKILLed. Audited in
    PostgreSQL: no partition has two owners in one generation, no committed offset goes below
    where its partition stood when a newer generation was stored (see
    ``audit_offsets_backwards``: a member's own commits may still land out of order within a
    generation, as with Kafka), and nothing acknowledged is lost."""
    group = next(f"race-{i}" for i in range(10_000)
                 if group_coordinator(f"race-{i}", [0, 1, 2]) == 1
                 and group_coordinator(f"race-{i}", [0, 1, 2, 3]) == 3)
    brokers = []
    for i in range(3):
        extra = ["--broker-lease-ms", "600000"] if i == 1 else []
        brokers.append(broker_factory(
            "--coordinator", postgres_db, "--object-store", f"s3://{S3_BUCKET}/cluster",
            "--node-id", str(i), "--group-initial-rebalance-delay-ms", "500", *extra,
            name=f"broker{i}"))
    for b in brokers:
        wait_for_brokers(b.bootstrap, {0, 1, 2})
    from conftest import psql
    psql(postgres_db, AUDIT_SQL)
    create_topic(brokers[0].bootstrap, topic, PARTITIONS)
    assert all(find_coordinator_at(b.port, group) == 1 for b in brokers)
    conf = {"session.timeout.ms": 6000, "max.poll.interval.ms": 6000}
    work = Workload([b.bootstrap for b in brokers], topic, group, consumer_conf=conf).start()
    work.wait_acked(1500)

    fourth = broker_factory("--coordinator", postgres_db, "--object-store",
                            f"s3://{S3_BUCKET}/cluster", "--node-id", "3",
                            "--group-initial-rebalance-delay-ms", "500", name="broker3")
    for b in (fourth, brokers[0], brokers[2]):
        wait_for_brokers(b.bootstrap, {0, 1, 2, 3})
    assert find_coordinator_at(fourth.port, group) == 3
    assert find_coordinator_at(brokers[0].port, group) == 3
    assert find_coordinator_at(brokers[1].port, group) == 1, "broker 1 sees the old cluster"
    # Newcomers through each side: both coordinators rebalance the group.
    work.add_consumer(fourth.bootstrap)
    work.add_consumer(brokers[1].bootstrap)
    work.wait_acked(work.acked_count() + 2500, timeout=60)
    # The race ends with the failover test's ending: broker 1 is SIGKILLed. Its lease would keep
    # it in the registry for ten minutes; the others stop naming it as soon as their probes find
    # it dead.
    brokers[1].kill()
    work.wait_acked(work.acked_count() + 1500, timeout=90)
    outcome = work.finish()
    print(f"\nview-change race, then SIGKILL of broker1: {outcome.describe()}")
    assert_clean(outcome.report)

    owners = audit_owners_per_generation(postgres_db, group)
    doubled = {gen: {tp: ids for tp, ids in per.items() if len(ids) > 1}
               for gen, per in owners.items()}
    doubled = {gen: tps for gen, tps in doubled.items() if tps}
    handovers = sum(b.stderr_path.read_text().count("handing it over")
                    for b in [*brokers, fourth])
    print(f"generations saved Stable: {sorted(owners)}; fenced saves handed the group over "
          f"{handovers} times")
    assert len(owners) >= 2, "the race produced rebalances"
    assert not doubled, f"partitions with two owners in one generation: {doubled}"
    across, within = audit_offsets_backwards(postgres_db, group)
    print(f"committed offsets that went back within a generation (a member's own commits "
          f"arriving out of order, as Kafka allows): {within[:10]}")
    assert not across, ("committed offsets went below where a partition stood when a newer "
                        f"generation was stored: {across[:10]}")
