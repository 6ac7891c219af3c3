"""SASL authentication end to end with real clients (issue 16, item 2).

A broker serves PLAINTEXT (for the test's own checks), SASL_SSL and
SASL_PLAINTEXT listeners. The first administrator is created at startup from
``--sasl-bootstrap-user`` and ``FJORD_SASL_BOOTSTRAP_PASSWORD``; further users are
created and described through confluent-kafka's AdminClient
(AlterUserScramCredentials / DescribeUserScramCredentials), as Kafka users do.

* confluent-kafka (current librdkafka) and Debian's kcat (librdkafka 2.0.2) over
  SASL_SSL with SCRAM-SHA-512 and SCRAM-SHA-256;
* kafka-python over SASL_SSL with PLAIN and SCRAM-SHA-256, kafkajs with
  SCRAM-SHA-512 and PLAIN;
* a wrong password, an unknown user and a deleted credential are refused with a
  SASL authentication error, and nothing those clients sent is stored;
* KIP-368: with ``--connections-max-reauth-ms`` a producer re-authenticates on its
  connection and keeps producing;
* an address that keeps failing is refused even with the right password.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialDeletion,
                                   UserScramCredentialUpsertion)

from conftest import Broker, free_port
from kafka_helpers import create_topic
from test_tls import Pki, consume, high_watermark, produce

KCAT = shutil.which("kcat")
JS_DIR = Path(__file__).resolve().parents[1] / "js"
ADMIN, ADMIN_PW = "admin", "admin-secret"


class SaslBroker(Broker):
    """A broker with PLAINTEXT on ``port``, SASL_SSL on ``sasl_ssl_port`` and
    SASL_PLAINTEXT on ``sasl_port``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sasl_ssl_port = free_port()
        self.sasl_port = free_port()

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def sasl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    def command(self) -> list[str]:
        return [
            str(self.binary), "serve",
            "--listener", f"PLAINTEXT://127.0.0.1:{self.port}",
            "--listener", f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}",
            "--listener", f"SASL_PLAINTEXT://127.0.0.1:{self.sasl_port}",
            "--data-dir", str(self.data_dir),
            "--sasl-bootstrap-user", ADMIN,
            *self.extra_args,
        ]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "main")


@pytest.fixture
def sasl_broker(fjord_bin: Path, tmp_path: Path, pki: Pki, monkeypatch):
    """Factory: ``sasl_broker(*extra_args)`` starts a SaslBroker with the test
    PKI's certificate and the bootstrap admin; stopped at teardown."""
    started: list[SaslBroker] = []
    monkeypatch.setenv("FJORD_SASL_BOOTSTRAP_PASSWORD", ADMIN_PW)
    monkeypatch.setenv("RUST_LOG", "info,fjord_broker::sasl=debug")
    cert, key = pki.issue("broker", server=True)

    def make(*extra_args: str) -> SaslBroker:
        base = tmp_path / f"sasl{len(started)}"
        b = SaslBroker(fjord_bin, base / "data", base, name=f"sasl{len(started)}",
                       extra_args=["--ssl-cert-file", str(cert), "--ssl-key-file", str(key),
                                   *extra_args])
        started.append(b)
        return b.start()

    yield make
    for b in started:
        if b.running:
            b.stop()


def sasl_conf(b: SaslBroker, pki: Pki, mechanism: str, user: str, password: str,
              tls: bool = True) -> dict:
    conf = {
        "bootstrap.servers": b.sasl_ssl_bootstrap if tls else b.sasl_bootstrap,
        "security.protocol": "SASL_SSL" if tls else "SASL_PLAINTEXT",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "socket.timeout.ms": 10000,
    }
    if tls:
        conf["ssl.ca.location"] = str(pki.ca)
    return conf


def add_user(b: SaslBroker, pki: Pki, user: str, password: str,
             mechanisms=(ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)) -> None:
    """Creates ``user`` through AlterUserScramCredentials, as the bootstrap admin."""
    admin = AdminClient(sasl_conf(b, pki, "SCRAM-SHA-512", ADMIN, ADMIN_PW))
    alterations = [UserScramCredentialUpsertion(user, ScramCredentialInfo(m, 8192),
                                                password.encode())
                   for m in mechanisms]
    for fut in admin.alter_user_scram_credentials(alterations).values():
        fut.result(timeout=30)


def refused(conf: dict, topic: str, value: bytes) -> list:
    """Produces ``value`` with a client expected to be refused: asserts it was not acked and
    returns the client-level errors (authentication failures are reported there)."""
    client_errors: list = []
    delivery: list = []
    p = Producer({**conf, "message.timeout.ms": 4000, "acks": "all",
                  "error_cb": client_errors.append})
    p.produce(topic, value, on_delivery=lambda err, msg: delivery.append(err))
    assert p.flush(15) == 0
    assert delivery and delivery[0] is not None, "a refused client's message was acked"
    return client_errors


def refused_all(confs: dict, topic: str) -> dict:
    """``refused`` for several clients at once (each waits out the same message timeout, so
    together they take one): ``{what: conf}`` -> ``{what: client-level errors}``."""
    errors: dict = {what: [] for what in confs}
    delivery: dict = {what: [] for what in confs}
    producers = {}
    for what, conf in confs.items():
        p = Producer({**conf, "message.timeout.ms": 4000, "acks": "all",
                      "error_cb": errors[what].append})
        p.produce(topic, f"refused: {what}".encode(),
                  on_delivery=lambda err, msg, what=what: delivery[what].append(err))
        producers[what] = p
    for what, p in producers.items():
        assert p.flush(15) == 0, what
        assert delivery[what] and delivery[what][0] is not None, \
            f"a refused client's message was acked ({what})"
    return errors


def authentication_failed(errors: list) -> bool:
    return any(e.code() == KafkaError._AUTHENTICATION for e in errors)


def kcat(b: SaslBroker, pki: Pki, mechanism: str, user: str, password: str,
         *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [KCAT, "-b", b.sasl_ssl_bootstrap, "-X", "security.protocol=SASL_SSL",
         "-X", f"ssl.ca.location={pki.ca}", "-X", f"sasl.mechanisms={mechanism}",
         "-X", f"sasl.username={user}", "-X", f"sasl.password={password}", *args],
        capture_output=True, text=True, timeout=60)


def test_scram_users_managed_by_admin_client_and_used_by_librdkafka(sasl_broker, pki, topic):
    b = sasl_broker()
    create_topic(b.bootstrap, topic, 1)
    add_user(b, pki, "writer", "writer-pw")

    admin = AdminClient(sasl_conf(b, pki, "SCRAM-SHA-256", ADMIN, ADMIN_PW))
    described = {u: f.result(timeout=30) for u, f in
                 admin.describe_user_scram_credentials(["writer", ADMIN]).items()}
    mechanisms = {u: sorted((i.mechanism.name, i.iterations)
                            for i in d.scram_credential_infos)
                  for u, d in described.items()}
    assert mechanisms["writer"] == [("SCRAM_SHA_256", 8192), ("SCRAM_SHA_512", 8192)]
    assert [m for m, _ in mechanisms[ADMIN]] == ["SCRAM_SHA_256", "SCRAM_SHA_512"]
    with pytest.raises(KafkaException, match="RESOURCE_NOT_FOUND|not exist|no SCRAM"):
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(timeout=30)

    values = {m: [f"{m}-{i}".encode() for i in range(50)]
              for m in ("SCRAM-SHA-512", "SCRAM-SHA-256")}
    for mechanism, vs in values.items():
        assert produce(sasl_conf(b, pki, mechanism, "writer", "writer-pw"), topic, vs) == []
    everything = values["SCRAM-SHA-512"] + values["SCRAM-SHA-256"]
    assert consume(sasl_conf(b, pki, "SCRAM-SHA-256", "writer", "writer-pw"), topic,
                   len(everything)) == everything

    # Metadata over SASL_SSL names the SASL_SSL port.
    meta = AdminClient(sasl_conf(b, pki, "SCRAM-SHA-512", "writer", "writer-pw")).list_topics(
        timeout=10)
    assert [(x.host, x.port) for x in meta.brokers.values()] == [("127.0.0.1", b.sasl_ssl_port)]

    if KCAT:
        for mechanism in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
            out = kcat(b, pki, mechanism, "writer", "writer-pw",
                       "-C", "-t", topic, "-e", "-q", "-f", "%s\\n")
            assert out.returncode == 0, out.stderr
            assert out.stdout.split() == [v.decode() for v in everything]
        out = kcat(b, pki, "SCRAM-SHA-512", "writer", "wrong", "-L")
        assert out.returncode != 0
        assert re.search(r"(?i)auth", out.stderr), out.stderr

    # Refused: wrong password, unknown user, a mechanism the user has no credential for.
    add_user(b, pki, "only256", "pw-256", mechanisms=(ScramMechanism.SCRAM_SHA_256,))
    refusals = {
        "wrong password": sasl_conf(b, pki, "SCRAM-SHA-512", "writer", "nope"),
        "unknown user": sasl_conf(b, pki, "SCRAM-SHA-256", "mallory", "writer-pw"),
        "no SHA-512 credential": sasl_conf(b, pki, "SCRAM-SHA-512", "only256", "pw-256"),
    }
    for what, errors in refused_all(refusals, topic).items():
        assert authentication_failed(errors), (what, errors)
    assert high_watermark(b.bootstrap, topic) == len(everything), "nothing refused is stored"
    assert produce(sasl_conf(b, pki, "SCRAM-SHA-256", "only256", "pw-256"), topic,
                   [b"sha256 only"]) == []

    # Deleting a credential through the AdminClient locks the user out.
    fut = admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion("writer", ScramMechanism.SCRAM_SHA_512)])
    for f in fut.values():
        f.result(timeout=30)
    errors = refused(sasl_conf(b, pki, "SCRAM-SHA-512", "writer", "writer-pw"), topic,
                     b"after deletion")
    assert authentication_failed(errors), errors
    assert produce(sasl_conf(b, pki, "SCRAM-SHA-256", "writer", "writer-pw"), topic,
                   [b"sha256 still works"]) == []
    log = b.stderr_path.read_text()
    assert "bootstrap SASL user created" in log
    assert "authentication_failed" in log and "source=127.0.0.1" in log
    assert "writer-pw" not in log and ADMIN_PW not in log, "no password is logged"


def kafka_python_roundtrip(b: SaslBroker, pki: Pki, topic: str, mechanism: str, user: str,
                           password: str) -> list[bytes]:
    from kafka import KafkaConsumer, KafkaProducer
    common = dict(bootstrap_servers=b.sasl_ssl_bootstrap, security_protocol="SASL_SSL",
                  sasl_mechanism=mechanism, sasl_plain_username=user,
                  sasl_plain_password=password, ssl_cafile=str(pki.ca),
                  ssl_check_hostname=True)
    producer = KafkaProducer(acks="all", **common)
    values = [f"kp-{mechanism}-{i}".encode() for i in range(20)]
    for v in values:
        producer.send(topic, v)
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(topic, group_id=f"kp-{mechanism}", auto_offset_reset="earliest",
                             consumer_timeout_ms=10000, **common)
    got = []
    for m in consumer:
        if m.value.startswith(f"kp-{mechanism}-".encode()):
            got.append(m.value)
        if len(got) == len(values):
            break
    consumer.close()
    assert got == values, mechanism
    return got


def test_kafka_python_and_kafkajs_over_sasl(sasl_broker, pki, topic):
    from kafka import KafkaProducer
    from kafka.errors import KafkaError
    b = sasl_broker()
    create_topic(b.bootstrap, topic, 1)
    add_user(b, pki, "app", "app-pw")
    stored = 0
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        stored += len(kafka_python_roundtrip(b, pki, topic, mechanism, "app", "app-pw"))
    wrong = KafkaProducer(bootstrap_servers=b.sasl_ssl_bootstrap, security_protocol="SASL_SSL",
                          sasl_mechanism="PLAIN", sasl_plain_username="app",
                          sasl_plain_password="wrong", ssl_cafile=str(pki.ca),
                          request_timeout_ms=5000, max_block_ms=3000)
    with pytest.raises(KafkaError):
        wrong.send(topic, b"refused").get(timeout=10)
    wrong.close(timeout=1)
    assert "invalid credentials (mechanism PLAIN)" in b.stderr_path.read_text()

    node = shutil.which("node")
    assert node, "node not found on PATH: run .ci/run (or scripts/setup-test-env.sh)"
    env = dict(os.environ, KAFKAJS_NO_PARTITIONER_WARNING="1")
    runs = [
        (b.sasl_ssl_bootstrap, "scram-sha-512", "app-pw", str(pki.ca), "ok"),
        (b.sasl_bootstrap, "plain", "app-pw", "-", "ok"),
        (b.sasl_ssl_bootstrap, "scram-sha-256", "wrong", str(pki.ca), "refused"),
        (b.sasl_ssl_bootstrap, "plain", "wrong", str(pki.ca), "refused"),
    ]
    for bootstrap, mechanism, password, ca, expect in runs:
        res = subprocess.run([node, str(JS_DIR / "sasl.js"), bootstrap, topic, mechanism, "app",
                              password, ca, expect],
                             cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (mechanism, expect, res.stdout, res.stderr)
        if expect == "ok":
            stored += 10
    assert high_watermark(b.bootstrap, topic) == stored


def test_sessions_are_reauthenticated_on_the_same_connection(sasl_broker, pki, topic):
    b = sasl_broker("--connections-max-reauth-ms", "2000")
    create_topic(b.bootstrap, topic, 1)
    add_user(b, pki, "steady", "steady-pw")
    producer = Producer({**sasl_conf(b, pki, "SCRAM-SHA-512", "steady", "steady-pw"),
                         "acks": "all"})
    errors: list = []
    sent = 0
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        producer.produce(topic, f"m{sent}".encode(),
                         on_delivery=lambda err, msg: err and errors.append(err))
        sent += 1
        producer.poll(0.1)
    assert producer.flush(30) == 0
    assert errors == []
    assert high_watermark(b.bootstrap, topic) == sent
    log = b.stderr_path.read_text()
    logins = [line for line in log.splitlines()
              if "SASL authentication succeeded" in line and "User:steady" in line]
    # One connection to the bootstrap address, one to the broker, each re-authenticating
    # about every 2 s (librdkafka re-authenticates before the session ends).
    assert len(logins) >= 4, logins
    assert "session expired" not in log


def test_an_address_that_keeps_failing_is_held_back(sasl_broker, pki, topic):
    from test_metrics import scrape
    metrics_port = free_port()
    b = sasl_broker("--sasl-failed-authentications-per-minute", "3",
                    "--metrics-listen", f"127.0.0.1:{metrics_port}")
    create_topic(b.bootstrap, topic, 1)
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    def attempt(password: str) -> None:
        p = KafkaProducer(bootstrap_servers=b.sasl_bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="SCRAM-SHA-256", sasl_plain_username=ADMIN,
                          sasl_plain_password=password, request_timeout_ms=5000,
                          max_block_ms=2000, reconnect_backoff_ms=5000)
        try:
            p.send(topic, b"x").get(timeout=5)
        finally:
            p.close(timeout=1)

    while b.stderr_path.read_text().count("invalid credentials") < 3:
        with pytest.raises(KafkaError):
            attempt("guess")
    # Over the limit now: the right password is refused too, unchecked.
    with pytest.raises(KafkaError):
        attempt(ADMIN_PW)
    assert "too many failed authentications" in b.stderr_path.read_text()
    assert high_watermark(b.bootstrap, topic) == 0
    m = scrape(metrics_port)
    assert m['fjord_sasl_authentications_total{result="throttled"}'] >= 1, m
    assert m['fjord_sasl_authentications_total{result="failure"}'] >= 4, m
