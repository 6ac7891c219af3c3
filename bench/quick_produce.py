"""Quick produce figures with a real client (confluent-kafka / librdkafka), local object store.

    .venv/bin/python bench/quick_produce.py [--records 200000] [--size 1024]

Starts target/release/fjord on a free port with a temporary data directory, then
1. throughput: one producer (acks=all, linger.ms=5, no compression) sends --records records of
   --size bytes to a 6-partition topic as fast as it can; reports MB/s and records/s from the first
   send to the last acknowledgement;
2. acknowledgement latency: the same producer sends at a fixed rate (--rate records/s, 1 KiB)
   for --seconds; reports p50/p99/p999 of send-to-acknowledgement time.
Client and broker share this machine. This is a smoke measurement for the single-node broker;
the benchmark suite proper (issue: performance) lives beside it in bench/.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(data: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    binary = os.environ.get("FJORD_BIN", str(REPO / "target" / "release" / "fjord"))
    proc = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / "broker.log", "wb"),
    )
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("broker did not start")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc, bootstrap = start_broker(Path(tmp) / "data")
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap})
            for t in ("throughput", "latency"):
                admin.create_topics([NewTopic(t, num_partitions=6, replication_factor=1)])[t].result(30)
            conf = {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "none",
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "batch.size": 1_000_000,
            }
            payload = os.urandom(args.size)

            p = Producer(conf)
            errors = []
            start = time.perf_counter()
            for i in range(args.records):
                while True:
                    try:
                        p.produce("throughput", payload, on_delivery=lambda e, m: e and errors.append(e))
                        break
                    except BufferError:
                        p.poll(0.01)
                p.poll(0)
            p.flush(120)
            elapsed = time.perf_counter() - start
            assert not errors, errors[:3]
            mb = args.records * args.size / 1e6
            print(f"throughput: {args.records} x {args.size} B in {elapsed:.2f}s = "
                  f"{mb / elapsed:.1f} MB/s, {args.records / elapsed:,.0f} records/s")

            p = Producer(conf)
            latencies: list[float] = []
            interval = 1.0 / args.rate
            payload = os.urandom(1024)
            begin = time.perf_counter()
            n = 0
            while time.perf_counter() - begin < args.seconds:
                due = begin + n * interval
                now = time.perf_counter()
                if now < due:
                    p.poll(min(due - now, 0.001))
                    continue
                sent = time.perf_counter()
                p.produce("latency", payload,
                          on_delivery=lambda e, m, sent=sent: latencies.append(time.perf_counter() - sent))
                p.poll(0)
                n += 1
            p.flush(60)
            latencies.sort()
            ms = [percentile(latencies, q) * 1000 for q in (0.5, 0.99, 0.999)]
            print(f"ack latency at {args.rate} records/s of 1 KiB ({len(latencies)} records): "
                  f"p50 {ms[0]:.1f} ms, p99 {ms[1]:.1f} ms, p999 {ms[2]:.1f} ms")
            print(f"machine: {platform.machine()}, {os.cpu_count()} cores, client and broker together")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
