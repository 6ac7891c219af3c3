"""Writes the fuzz targets' seeds (run with the test venv: `.venv/bin/python fuzz/make_seeds.py`).

- fuzz/seeds/request: request frames for the `request` target, encoded by kafka-python, an
  independent implementation of the protocol, without the 4-byte length prefix.
- fuzz/seeds/sasl: inputs for the `sasl` target in its own format (see the comment at the top of
  fuzz/fuzz_targets/sasl.rs): a setup byte, then steps of a selector byte and, for some, a
  u16-length-prefixed chunk. They log in the seeded user ("alice") by every mechanism and framing.
"""

from pathlib import Path

from kafka.protocol.api import RequestHeader
from kafka.protocol.admin import CreateTopicsRequest
from kafka.protocol.fetch import FetchRequest
from kafka.protocol.metadata import MetadataRequest
from kafka.protocol.list_offsets import ListOffsetsRequest
from kafka.protocol.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder

OUT = Path(__file__).parent / "seeds" / "request"
SASL_OUT = Path(__file__).parent / "seeds" / "sasl"

# The sasl target's setup byte: mechanism in bits 0-1, then flags.
SCRAM_256, SCRAM_512, PLAIN = 0, 1, 2
HANDSHAKE_V1, HANDSHAKE_FIRST, REAUTH, SMALL_TOKEN_LIMIT = 4, 8, 0x10, 0x20
# The client-first message the target's oracle client sends (its nonce is "fuzzclientnonce").
CLIENT_FIRST = b"n,,n=alice,r=fuzzclientnonce"


def chunk(data):
    return len(data).to_bytes(2, "big") + data


def authenticate(token, version=2):
    """Selector 0: the chunk as a SaslAuthenticate request."""
    return bytes([0 | version << 3]) + chunk(token)


def raw(token):
    """Selector 1: the chunk as a bare frame."""
    return bytes([1]) + chunk(token)


def handshake_named(name, version=1):
    """Selector 2: a SaslHandshake naming the chunk."""
    return bytes([2 | version << 3]) + chunk(name)


def handshake(mechanism, version=1):
    """Selector 3: a SaslHandshake for a known mechanism."""
    return bytes([3 | mechanism << 3 | version << 5])


def oracle(framing=2):
    """Selector 4: the honest client's next message (framing 0-2: SaslAuthenticate version,
    3: bare)."""
    return bytes([4 | framing << 3])


def advance_clock(units_of_10ms):
    return bytes([5]) + units_of_10ms.to_bytes(2, "big")


def metadata():
    return bytes([6])


def sasl_seeds():
    v1 = HANDSHAKE_V1 | HANDSHAKE_FIRST
    return {
        "scram256_client_first_then_oracle": bytes([SCRAM_256 | v1])
        + authenticate(CLIENT_FIRST) + oracle(),
        "scram512_client_first_then_oracle": bytes([SCRAM_512 | v1])
        + authenticate(CLIENT_FIRST, version=1) + oracle(1),
        "scram256_oracle_login": bytes([SCRAM_256 | v1]) + oracle() + oracle() + metadata(),
        "plain_login": bytes([PLAIN | v1]) + authenticate(b"\0alice\0alice-pw", version=0)
        + metadata(),
        "handshake_v1_then_scram": bytes([SCRAM_256])
        + handshake_named(b"SCRAM-SHA-256") + authenticate(CLIENT_FIRST) + oracle(),
        "handshake_v0_bare_tokens": bytes([SCRAM_512 | HANDSHAKE_FIRST])
        + raw(CLIENT_FIRST) + oracle(3),
        "plain_bare_token": bytes([PLAIN | HANDSHAKE_FIRST]) + raw(b"alice\0alice\0alice-pw"),
        "oversized_token": bytes([SCRAM_256 | v1 | SMALL_TOKEN_LIMIT])
        + authenticate(b"n,,n=alice,r=" + b"x" * 300),
        "reauthentication": bytes([SCRAM_256 | v1 | REAUTH]) + oracle() + oracle() + metadata()
        + handshake(SCRAM_256) + oracle() + oracle() + advance_clock(100) + metadata(),
    }


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
    SASL_OUT.mkdir(parents=True, exist_ok=True)
    seeds = sasl_seeds()
    for name, data in seeds.items():
        (SASL_OUT / name).write_bytes(data)
    print(f"wrote {len(seeds)} seeds to {SASL_OUT}")


if __name__ == "__main__":
    main()
