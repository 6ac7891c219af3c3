"""Writes seed request frames for the `request` fuzz target (run with the test venv:
`.venv/bin/python fuzz/make_seeds.py`). Frames are encoded by kafka-python, an independent
implementation of the protocol, without the 4-byte length prefix."""

from pathlib import Path

from kafka.protocol.api import RequestHeader
from kafka.protocol.admin import CreateTopicsRequest
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

OUT = Path(__file__).parent / "seeds" / "request"


def frame(request, correlation_id=1):
    header = RequestHeader(request, correlation_id=correlation_id, client_id="seed")
    return header.encode() + request.encode()


def batch(n=3):
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=1000 + i, key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"x")])
    return bytes(b.build())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = {
        "metadata_v1_all": MetadataRequest[1](topics=None),
        "metadata_v4_t": MetadataRequest[4](topics=["t"], allow_auto_topic_creation=True),
        "create_topics_v2": CreateTopicsRequest[2](
            create_topic_requests=[("t", 3, 1, [], [("retention.ms", "1000")])],
            timeout=1000, validate_only=False),
        "produce_v3": ProduceRequest[3](transactional_id=None, required_acks=-1, timeout=1000,
                                        topics=[("t", [(0, batch())])]),
        "fetch_v4": FetchRequest[4](replica_id=-1, max_wait_time=10, min_bytes=1, max_bytes=1 << 20,
                                    isolation_level=0, topics=[("t", [(0, 0, 1 << 20)])]),
        "list_offsets_v1": ListOffsetsRequest[1](replica_id=-1, topics=[("t", [(0, -2)])]),
    }
    for name, request in seeds.items():
        (OUT / name).write_bytes(frame(request))
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
