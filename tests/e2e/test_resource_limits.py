"""Memory a client can make the broker spend stays bounded.

- A raw Fetch asking for 2^31-1 bytes over a backlog far larger than the broker's
  ``fetch.max.bytes`` is answered with at most that much (plus the one batch Kafka allows), and
  many such fetches at once do not make the broker's memory grow with the backlog.
- A decompression bomb (a small zstd batch of a huge, compressible record, produced by
  librdkafka) is stored, and a ListOffsets by timestamp that lands inside it neither crashes the
  broker nor inflates the record into memory.

The broker's peak resident memory is read from ``/proc/PID/status`` (``VmHWM``), reset before
each measurement through ``/proc/PID/clear_refs``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from kafka_helpers import create_topic

MiB = 1 << 20


def peak_rss(pid: int) -> int:
    """Peak resident memory of a process since the last reset, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def can_reset_peak_rss(pid: int) -> bool:
    try:
        reset_peak_rss(pid)
        return True
    except OSError:
        return False


def recv_exact(s: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = s.recv(min(n, 1 << 20))
        assert chunk, "connection closed mid-response"
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def raw_fetch(port: int, topic: str, partitions: int, *, max_bytes: int,
              partition_max_bytes: int, correlation_id: int = 1) -> tuple[int, list[int]]:
    """Sends one Fetch v4 (no session) from offset 0 of every partition; returns the size of
    the response frame and the record bytes per partition."""
    body = struct.pack(">iiiib", -1, 100, 1, max_bytes, 0)
    body += struct.pack(">i", 1) + string(topic) + struct.pack(">i", partitions)
    for p in range(partitions):
        body += struct.pack(">iqi", p, 0, partition_max_bytes)
    header = struct.pack(">hhi", 1, 4, correlation_id) + string("raw-fetch")
    frame = header + body
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(struct.pack(">i", len(frame)) + frame)
        (size,) = struct.unpack(">i", recv_exact(s, 4))
        response = recv_exact(s, size)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, response, pos)
        pos += struct.calcsize(fmt)
        return values

    (cid, _throttle, n_topics) = take(">iii")
    assert cid == correlation_id
    records = []
    for _ in range(n_topics):
        (name_len,) = take(">h")
        pos += name_len
        (n_parts,) = take(">i")
        for _ in range(n_parts):
            _index, error, _hw, _lso = take(">ihqq")
            assert error == 0, f"partition error {error}"
            (n_aborted,) = take(">i")
            pos += max(n_aborted, 0) * 16
            (length,) = take(">i")
            length = max(length, 0)
            pos += length
            records.append(length)
    return size, records


@pytest.mark.timeout(240)
def test_huge_fetches_are_capped_and_memory_stays_flat(broker_factory, topic):
    fetch_max = 4 * MiB
    b = broker_factory("--fetch-max-bytes", str(fetch_max),
                       "--fetch-memory-bytes", str(16 * MiB),
                       "--read-cache-bytes", str(8 * MiB))
    if not can_reset_peak_rss(b.proc.pid):
        pytest.skip("cannot reset the broker's peak RSS (/proc/PID/clear_refs)")
    partitions = 4
    create_topic(b.bootstrap, topic, partitions)
    # A backlog of ~96 MB of incompressible 100 KB records, 24 MB per partition.
    p = Producer({"bootstrap.servers": b.bootstrap, "linger.ms": 20,
                  "batch.size": 1_000_000, "compression.type": "none"})
    value = os.urandom(100_000)
    backlog = 0
    for i in range(960):
        while True:
            try:
                p.produce(topic, value=value, partition=i % partitions)
                break
            except BufferError:
                p.poll(0.1)
        backlog += len(value)
    assert p.flush(60) == 0
    time.sleep(1)

    reset_peak_rss(b.proc.pid)
    before = peak_rss(b.proc.pid)
    results: list[tuple[int, list[int]]] = []
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            results.append(raw_fetch(b.port, topic, partitions, max_bytes=2**31 - 1,
                                     partition_max_bytes=2**31 - 1, correlation_id=n))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 16
    peak = peak_rss(b.proc.pid)
    for size, records in results:
        # At most fetch.max.bytes of records, plus the first batch (~1 MB here).
        assert sum(records) <= fetch_max + 1_100_000, (size, records)
        assert sum(records) > 0
    growth = peak - before
    print(f"\n16 fetches of 2^31-1 bytes over a {backlog / MiB:.0f} MiB backlog: responses of "
          f"{max(sum(r) for _, r in results) / MiB:.1f} MiB at most; broker peak RSS "
          f"{before / MiB:.0f} -> {peak / MiB:.0f} MiB")
    # Unbounded, each fetch would hold the whole backlog (16 x 96 MB, twice over while
    # encoding). Bounded: the 16 MiB budget, its responses' encoded copies and buffers.
    assert growth < 160 * MiB, f"broker memory grew by {growth / MiB:.0f} MiB"
    assert b.running


@pytest.mark.timeout(180)
def test_a_decompression_bomb_does_not_inflate_in_the_broker(broker_factory, topic):
    b = broker_factory("--read-cache-bytes", str(8 * MiB))
    if not can_reset_peak_rss(b.proc.pid):
        pytest.skip("cannot reset the broker's peak RSS (/proc/PID/clear_refs)")
    create_topic(b.bootstrap, topic, 1)
    # librdkafka compresses after its size check, so a client allowed large messages sends
    # 3 x 192 MB of zeros as zstd batches of a few kilobytes each, well under the broker's
    # max.message.bytes. Timestamps: 1000 tiny, 2000 bomb, 3000 tiny, in separate batches.
    p = Producer({"bootstrap.servers": b.bootstrap, "compression.type": "zstd",
                  "message.max.bytes": 1_000_000_000, "linger.ms": 0,
                  "queue.buffering.max.kbytes": 2_000_000})
    bomb = bytes(192 * MiB)
    sent = []
    for i, ts in enumerate([1000, 2000, 2001, 2002, 3000]):
        value = bomb if 2000 <= ts < 3000 else b"tiny"
        p.produce(topic, value=value, timestamp=ts,
                  on_delivery=lambda err, msg: sent.append(err))
        assert p.flush(60) == 0
    del bomb
    assert sent == [None] * 5, sent

    reset_peak_rss(b.proc.pid)
    before = peak_rss(b.proc.pid)
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "bomb-lookup"})
    try:
        expected = {500: 0, 1500: 1, 2000: 1, 2001: 2, 2002: 3, 2500: 4, 3000: 4}
        for ts, offset in expected.items():
            [found] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=30)
            assert found.error is None, found.error
            assert found.offset == offset, (ts, found.offset)
    finally:
        c.close()
    peak = peak_rss(b.proc.pid)
    print(f"\nListOffsets by timestamp over 3 x 192 MiB zstd bombs: broker peak RSS "
          f"{before / MiB:.0f} -> {peak / MiB:.0f} MiB")
    assert peak - before < 64 * MiB, f"broker memory grew by {(peak - before) / MiB:.0f} MiB"
    assert b.running
