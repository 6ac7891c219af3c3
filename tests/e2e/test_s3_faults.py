"""The broker on S3 while S3 misbehaves: errors, slow responses, an outage.

A single broker (embedded coordinator, ``--object-store s3://...``) talks to
moto's S3 server through :class:`~s3_fault_proxy.S3FaultProxy`.  An
idempotent confluent-kafka producer streams a few thousand records while the
proxy injects faults; afterwards everything is read back and the history goes
through the delivery checker (tests/checker.py): no failed delivery, nothing
lost, duplicated, reordered or phantom, offsets dense.  The longest pause in
acknowledgements is printed (``pytest -s``).

``test_proxy_forwards_s3_api`` checks the proxy itself with boto3 (no broker).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from confluent_kafka import Producer

from checker import Recorder, assert_clean, longest_pause
from conftest import S3_BUCKET, FaultyS3, _port_accepts, free_port, use_s3
from kafka_helpers import consume_partitions, create_topic, produce_with_backpressure
from test_metrics import scrape

PARTITIONS = 3
RATE = 500           # records per second
STREAM_SECONDS = 8.0
FLUSH_TIMEOUT_S = 60.0


def seq_of(value: bytes) -> tuple[str, int]:
    """Values are ``b"<producer>-<seq>"``."""
    producer, seq = value.decode().rsplit("-", 1)
    return producer, int(seq)


@dataclass
class Stream:
    produced: int = 0
    remaining: int = 0
    started: float = 0.0
    errors: list = field(default_factory=list)  # error_cb reports


def produce_stream(bootstrap: str, topic: str, rec: Recorder, seconds: float = STREAM_SECONDS,
                   rate: int = RATE) -> Stream:
    """Produce ``rate`` records/s for ``seconds`` with an idempotent producer
    (default ``message.timeout.ms``), then flush."""
    stream = Stream(started=time.monotonic())
    producer = Producer({
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "error_cb": stream.errors.append,
    })
    while (elapsed := time.monotonic() - stream.started) < seconds:
        while stream.produced < elapsed * rate:
            n = stream.produced
            produce_with_backpressure(producer, topic, key=b"k%d" % (n % 11),
                                      value=b"p0-%d" % n, on_delivery=rec.on_delivery)
            stream.produced += 1
        producer.poll(0.01)
    stream.remaining = producer.flush(FLUSH_TIMEOUT_S)
    return stream


def s3_broker(broker_factory, monkeypatch, faulty_s3: FaultyS3, *args: str):
    use_s3(monkeypatch, faulty_s3.url)
    return broker_factory("--object-store", f"s3://{S3_BUCKET}/faults", *args)


def check_history(broker, topic: str, rec: Recorder, stream: Stream, faulty_s3: FaultyS3) -> float:
    """Read the topic back and assert a clean delivery history; returns how
    long the read-back took (s).

    The broker is restarted first, so that the reads come from S3 (through
    the proxy and whatever faults are on) rather than from its cache of the
    objects it wrote."""
    fatal = [e for e in stream.errors if e.fatal()]
    assert not fatal, f"producer hit fatal error(s): {fatal}"
    assert stream.remaining == 0, f"{stream.remaining} records undelivered after {FLUSH_TIMEOUT_S}s flush"
    broker.restart()
    reading = time.monotonic()
    got = consume_partitions(broker.bootstrap, topic, range(PARTITIONS))
    read_seconds = time.monotonic() - reading
    for messages in got.values():
        for m in messages:
            rec.read(m, session="readback")
    acks = rec.acks
    pause = longest_pause([stream.started] + [a.at for a in acks])
    print(f"\nproduced {stream.produced}, acked {len(acks)}, failed {len(rec.failed)}, "
          f"client errors {len(stream.errors)}; longest pause in acks {pause:.2f}s; "
          f"read back in {read_seconds:.2f}s; proxy {faulty_s3.proxy.stats()}")
    report = rec.check(seq_of=seq_of)
    print(report.summary())
    assert_clean(report)
    assert len(acks) == stream.produced, report.summary()
    return read_seconds
    assert stream.produced >= RATE * STREAM_SECONDS * 0.9, f"only {stream.produced} produced"


# --------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_s3_errors(broker_factory, topic, faulty_s3, monkeypatch):
    """a) ~25% of S3 requests fail: 503 SlowDown before reaching S3, and 500
    InternalError after S3 already carried the request out."""
    broker = s3_broker(broker_factory, monkeypatch, faulty_s3)
    create_topic(broker.bootstrap, topic, PARTITIONS)
    proxy = faulty_s3.proxy
    proxy.fail_fraction(0.2, 503, "SlowDown")
    proxy.fail_fraction(0.06, 500, "InternalError", after_upstream=True)

    rec = Recorder()
    stream = produce_stream(broker.bootstrap, topic, rec)
    check_history(broker, topic, rec, stream, faulty_s3)  # faults stay on for the reads
    stats = proxy.stats()
    assert stats.get("injected.503.SlowDown", 0) >= 20, stats
    assert stats.get("injected.500.InternalError", 0) >= 5, stats
    assert stats.get("requests.GET", 0) > 0, f"the reads did not go to S3: {stats}"


@pytest.mark.timeout(120)
def test_s3_slow_responses(broker_factory, topic, faulty_s3, monkeypatch):
    """b) 10% of responses are held 5 s, longer than the broker's S3 request
    timeout (2 s): the client times out and retries. Reads are hedged: a GET
    still running after 100 ms gets a second one, so a held response does not
    hold up the read-back for its timeout."""
    metrics_port = free_port()
    broker = s3_broker(broker_factory, monkeypatch, faulty_s3, "--object-store-option", "timeout=2s",
                       "--read-hedge-ms", "100", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    faulty_s3.proxy.delay_fraction(0.1, 5.0)

    rec = Recorder()
    stream = produce_stream(broker.bootstrap, topic, rec)
    held_while_producing = faulty_s3.proxy.stats().get("delayed", 0)
    # The broker restarts before reading back, so its counters cover the read-back only.
    read_seconds = check_history(broker, topic, rec, stream, faulty_s3)
    held_reads = faulty_s3.proxy.stats().get("delayed", 0) - held_while_producing
    hedged = scrape(metrics_port)["fjord_read_hedged_gets_total"]
    print(f"read-back: {held_reads} responses held, {hedged:.0f} GETs hedged, {read_seconds:.1f}s")
    assert held_reads >= 3, faulty_s3.proxy.stats()
    # Every held GET is hedged after 100 ms (some hedges are held too, and are not hedged again).
    assert hedged >= held_reads / 2, (hedged, held_reads)


@pytest.mark.timeout(120)
def test_s3_outage(broker_factory, topic, faulty_s3, monkeypatch):
    """c) S3 is unreachable (connections refused and reset) for 10 s in the
    middle of the stream."""
    down_at, down_for = 3.0, 10.0
    broker = s3_broker(broker_factory, monkeypatch, faulty_s3)
    create_topic(broker.bootstrap, topic, PARTITIONS)

    rec = Recorder()
    outage = threading.Timer(down_at, faulty_s3.proxy.down, args=(down_for,))
    outage.start()
    try:
        stream = produce_stream(broker.bootstrap, topic, rec, seconds=down_at + down_for + 4)
    finally:
        outage.cancel()
    check_history(broker, topic, rec, stream, faulty_s3)

    back = stream.started + down_at + down_for
    acks_at = sorted(a.at for a in rec.acks)
    pause = longest_pause([stream.started] + acks_at)
    print(f"S3 down from t={down_at:.0f}s for {down_for:.0f}s; longest pause in acks {pause:.2f}s; "
          f"first ack after S3 came back: +{next((t - back for t in acks_at if t >= back), -1):.2f}s")
    assert faulty_s3.proxy.stats().get("down") == 1
    assert acks_at and acks_at[-1] > back, "nothing acknowledged after S3 came back"


# --------------------------------------------------------------------------


def test_proxy_forwards_s3_api(faulty_s3):
    """The proxy passes the S3 API through unchanged (SigV4 still verifies),
    and its faults look like S3's to a real S3 client (boto3)."""
    import boto3

    proxy = faulty_s3.proxy
    s3 = boto3.client("s3", endpoint_url=proxy.url, aws_access_key_id="test",
                      aws_secret_access_key="test", region_name="us-east-1",
                      config=Config(retries={"total_max_attempts": 1},
                                    connect_timeout=2, read_timeout=5))
    b = S3_BUCKET
    s3.put_object(Bucket=b, Key="a/one", Body=b"0123456789")
    assert s3.get_object(Bucket=b, Key="a/one", Range="bytes=2-5")["Body"].read() == b"2345"
    assert s3.head_object(Bucket=b, Key="a/one")["ContentLength"] == 10
    listed = s3.list_objects_v2(Bucket=b, Prefix="a/")
    assert [o["Key"] for o in listed["Contents"]] == ["a/one"]

    part = b"x" * (5 << 20)  # multipart: POST to create and complete, PUT for parts
    upload = s3.create_multipart_upload(Bucket=b, Key="a/big")["UploadId"]
    etags = [s3.upload_part(Bucket=b, Key="a/big", UploadId=upload, PartNumber=n, Body=part)["ETag"]
             for n in (1, 2)]
    s3.complete_multipart_upload(Bucket=b, Key="a/big", UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": e, "PartNumber": n} for n, e in zip((1, 2), etags)]})
    assert faulty_s3.s3.head_object(Bucket=b, Key="a/big")["ContentLength"] == 2 * len(part)

    s3.delete_object(Bucket=b, Key="a/one")
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=b, Key="a/one")
    assert e.value.response["Error"]["Code"] == "404"

    proxy.fail_fraction(1.0, 503, "SlowDown")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=b, Key="a/big")
    assert e.value.response["Error"]["Code"] == "SlowDown"
    proxy.clear()

    proxy.delay_fraction(1.0, 0.3)
    t0 = time.monotonic()
    s3.head_object(Bucket=b, Key="a/big")
    assert time.monotonic() - t0 >= 0.3
    proxy.clear()

    proxy.down(1.0)
    assert proxy.is_down and not _port_accepts(proxy.port)
    with pytest.raises(EndpointConnectionError):
        s3.head_object(Bucket=b, Key="a/big")
    time.sleep(1.3)
    assert not proxy.is_down
    assert s3.head_object(Bucket=b, Key="a/big")["ContentLength"] == 2 * len(part)

    stats = proxy.stats()
    assert stats["injected.503.SlowDown"] == 1 and stats["delayed"] == 1 and stats["down"] == 1, stats
    assert stats["requests.POST"] == 2 and stats["requests.DELETE"] == 1, stats
