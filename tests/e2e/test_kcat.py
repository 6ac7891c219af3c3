"""100,000 messages through a 6-partition topic, produced and consumed back
byte-identical and in order, with two librdkafka generations:

* ``test_kcat_roundtrip_debian_librdkafka`` uses Debian's ``/usr/bin/kcat``
  (kcat 1.7.1 linked against Debian's librdkafka 2.0.2);
* ``test_roundtrip_current_librdkafka_via_confluent_python`` does the same
  with confluent-kafka for Python, which bundles a current librdkafka (a
  current kcat build is not packaged anywhere we can install from).

``test_kcat_metadata_lists_topic`` checks ``kcat -L`` output.

The topic is created with the CreateTopics API (kcat cannot create topics).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from confluent_kafka import Producer

from kafka_helpers import consume_partitions, create_topic, flush_all, produce_with_backpressure

N_MESSAGES = 100_000
N_PARTITIONS = 6
KEY_DELIM = b":"
# kcat consume format: a text header line, then the raw key and value bytes
# (lengths from the header), then a newline.  Binary-safe.
KCAT_FORMAT = "%p %o %K %S\\n%k%s\\n"

Expected = dict[int, list[tuple[bytes, bytes]]]  # partition -> [(key, value)]
Got = dict[int, list[tuple[int, bytes, bytes]]]  # partition -> [(offset, key, value)]


@pytest.fixture(scope="module")
def kcat_bin() -> str:
    """Debian's kcat (``$KCAT`` overrides)."""
    path = os.environ.get("KCAT", "/usr/bin/kcat")
    if not (Path(path).is_file() and os.access(path, os.X_OK)) and not shutil.which(path):
        pytest.fail(f"kcat not found at {path}: run .ci/run (apt-get install kcat)", pytrace=False)
    return path


def expected_messages(seed: int = 20240601) -> Expected:
    """Deterministic messages: ``N_MESSAGES`` spread evenly over the
    partitions.  Keys are ``k<p>-<seq>``; values start with the partition and
    sequence number followed by 0..300 random bytes (any byte but ``\\n``, the
    kcat input delimiter)."""
    rng = random.Random(seed)
    out: Expected = {}
    for p in range(N_PARTITIONS):
        n = N_MESSAGES // N_PARTITIONS + (1 if p < N_MESSAGES % N_PARTITIONS else 0)
        msgs = []
        for seq in range(n):
            key = f"k{p}-{seq}".encode()
            payload = rng.randbytes(rng.randrange(0, 301)).replace(b"\n", b"\xff")
            value = f"p{p:02d}-s{seq:06d}-".encode() + payload
            msgs.append((key, value))
        out[p] = msgs
    assert sum(len(m) for m in out.values()) == N_MESSAGES
    return out


def verify(expected: Expected, got: Got) -> None:
    """Per partition: exactly the expected messages, in order, at offsets
    0..n-1.  Reports the first difference instead of diffing huge lists."""
    assert sorted(got) == sorted(expected), f"partitions: got {sorted(got)}"
    for p, exp in expected.items():
        recs = got[p]
        for i, (off, key, value) in enumerate(recs[: len(exp)]):
            assert off == i, f"partition {p}: record #{i} has offset {off}, want {i} (dense offsets)"
            if (key, value) != exp[i]:
                raise AssertionError(
                    f"partition {p} offset {i}: got key={key!r} value={value[:60]!r}... "
                    f"want key={exp[i][0]!r} value={exp[i][1][:60]!r}..."
                )
        assert len(recs) == len(exp), f"partition {p}: got {len(recs)} records, want {len(exp)}"


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command; fail with its stderr on timeout or non-zero exit."""
    try:
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stderr = (e.stderr or b"").decode(errors="replace")
        raise AssertionError(
            f"{' '.join(cmd)} did not finish within {timeout}s\nstderr:\n{stderr[-4000:]}"
        ) from None
    assert res.returncode == 0, (
        f"{' '.join(cmd)} exited with {res.returncode}\n"
        f"stderr:\n{res.stderr.decode(errors='replace')[-4000:]}"
    )
    return res


def parse_kcat_output(out: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """Parse output of ``kcat -C -f KCAT_FORMAT`` into
    ``[(partition, offset, key, value)]``."""
    recs = []
    pos = 0
    while pos < len(out):
        nl = out.index(b"\n", pos)
        p, off, klen, vlen = (int(x) for x in out[pos:nl].split(b" "))
        pos = nl + 1
        key = out[pos : pos + max(klen, 0)]
        pos += max(klen, 0)
        value = out[pos : pos + max(vlen, 0)]
        pos += max(vlen, 0)
        assert out[pos : pos + 1] == b"\n", f"kcat output framing broken at byte {pos}"
        pos += 1
        recs.append((p, off, key, value))
    return recs


def test_kcat_roundtrip_debian_librdkafka(broker, topic, kcat_bin, tmp_path):
    """Debian kcat/librdkafka 2.0.2: produce 100k messages per partition
    with ``-p N -K:``, consume each partition with ``-o beginning -e``."""
    create_topic(broker.bootstrap, topic, N_PARTITIONS)
    expected = expected_messages()

    for p, msgs in expected.items():
        infile = tmp_path / f"in-{p}.txt"
        infile.write_bytes(b"".join(k + KEY_DELIM + v + b"\n" for k, v in msgs))
        run(
            [kcat_bin, "-P", "-b", broker.bootstrap, "-t", topic, "-p", str(p),
             "-K", KEY_DELIM.decode(), "-X", "message.timeout.ms=60000", "-l", str(infile)],
            timeout=120,
        )

    got: Got = {}
    for p in expected:
        res = run(
            [kcat_bin, "-C", "-b", broker.bootstrap, "-t", topic, "-p", str(p),
             "-o", "beginning", "-e", "-X", "check.crcs=true", "-f", KCAT_FORMAT],
            timeout=120,
        )
        recs = parse_kcat_output(res.stdout)
        assert all(rp == p for rp, _, _, _ in recs), f"kcat -p {p} returned other partitions"
        got[p] = [(off, k, v) for _, off, k, v in recs]

    verify(expected, got)


def test_roundtrip_current_librdkafka_via_confluent_python(broker, topic):
    """Same messages and checks as the kcat test, but with the current
    librdkafka bundled in confluent-kafka for Python."""
    create_topic(broker.bootstrap, topic, N_PARTITIONS)
    expected = expected_messages()

    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5,
                         "message.timeout.ms": 60000})
    failures = []

    def on_delivery(err, msg):
        if err is not None:
            failures.append(err)

    for p, msgs in expected.items():
        for key, value in msgs:
            produce_with_backpressure(producer, topic, partition=p, key=key, value=value,
                                      on_delivery=on_delivery)
    flush_all(producer)
    assert not failures, f"{len(failures)} deliveries failed, first: {failures[0]}"

    msgs = consume_partitions(broker.bootstrap, topic, range(N_PARTITIONS), timeout=120)
    got: Got = {p: [(m.offset(), m.key(), m.value()) for m in ms] for p, ms in msgs.items()}
    verify(expected, got)


def test_kcat_metadata_lists_topic(broker, topic, kcat_bin):
    """``kcat -L -J`` shows the single broker and the topic with 6
    partitions, each led by that broker."""
    create_topic(broker.bootstrap, topic, N_PARTITIONS)
    res = run([kcat_bin, "-L", "-J", "-b", broker.bootstrap, "-t", topic], timeout=30)
    md = json.loads(res.stdout)

    brokers = md["brokers"]
    assert len(brokers) == 1, brokers
    assert brokers[0]["name"] == broker.bootstrap, brokers
    broker_id = brokers[0]["id"]
    assert broker_id == 0, "fjord runs as node id 0"

    topics = [t for t in md["topics"] if t["topic"] == topic]
    assert len(topics) == 1, md["topics"]
    t = topics[0]
    assert "error" not in t, t
    parts = sorted(t["partitions"], key=lambda x: x["partition"])
    assert [x["partition"] for x in parts] == list(range(N_PARTITIONS)), parts
    for x in parts:
        assert "error" not in x, x
        assert x["leader"] == broker_id, x
        assert [r["id"] for r in x["replicas"]] == [broker_id], x
        assert [r["id"] for r in x["isrs"]] == [broker_id], x

    # The plain-text form says the same.
    text = run([kcat_bin, "-L", "-b", broker.bootstrap, "-t", topic], timeout=30).stdout.decode()
    assert f'topic "{topic}" with {N_PARTITIONS} partitions:' in text, text
