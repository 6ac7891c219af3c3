"""Listeners and TLS, end to end, with real clients (issue 16, item 1).

A broker serves a PLAINTEXT and an SSL listener at once (Kafka's ``listeners`` /
``advertised.listeners``); Metadata answers each client with the addresses of
the listener it connected to. Certificates are made with the ``openssl`` command
line tool, as docs/security.md shows:

* confluent-kafka (current librdkafka) and Debian's kcat (librdkafka 2.0.2)
  produce and consume over SSL;
* with ``--ssl-client-auth required`` (mTLS) a client certificate names the
  principal through ``--ssl-principal-mapping-rules``; a client without a
  certificate, with one from another CA, or trusting another CA for the broker
  is refused and nothing it sent is stored;
* new certificate files are picked up without a restart, while connected
  producers keep working.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from conftest import S3_BUCKET, Broker, free_port, use_s3
from kafka_helpers import create_topic, wait_for_brokers

KCAT = shutil.which("kcat")


# ------------------------------------------------------------------ certificates


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A throwaway CA in ``directory`` that issues EC certificates with ``openssl``."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca = self.dir / f"{name}-ca.pem"
        self.ca_key = self.dir / f"{name}-ca.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "2",
                "-subj", f"/O=Example/CN={name} CA", cwd=self.dir)

    def issue(self, cn: str, server: bool, stem: str | None = None) -> tuple[Path, Path]:
        """A certificate for ``O=Example, CN=cn`` signed by this CA: (cert, key)."""
        stem = stem or f"{self.name}-{cn}"
        key, csr, cert = (self.dir / f"{stem}{ext}" for ext in (".key", ".csr", ".pem"))
        ext = self.dir / f"{stem}.ext"
        usage = "serverAuth" if server else "clientAuth"
        ext.write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature\n"
            f"extendedKeyUsage={usage}\n"
            + ("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "")
        )
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(csr), "-subj", f"/O=Example/CN={cn}",
                cwd=self.dir)
        openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey",
                str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                "-extfile", str(ext), cwd=self.dir)
        return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki", "main")


# ------------------------------------------------------------------ brokers


class ListenerBroker(Broker):
    """A broker with a PLAINTEXT listener on ``port`` and an SSL listener on ``ssl_port``."""

    def __init__(self, *args, ssl_port: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ssl_port = ssl_port

    @property
    def ssl_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ssl_port}"

    def command(self) -> list[str]:
        return [
            str(self.binary), "serve",
            "--listener", f"PLAINTEXT://127.0.0.1:{self.port}",
            "--listener", f"SSL://127.0.0.1:{self.ssl_port}",
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]


@pytest.fixture
def tls_broker(fjord_bin: Path, tmp_path: Path, monkeypatch):
    """Factory: ``tls_broker(*extra_args)`` starts a ListenerBroker (SSL with
    the given TLS flags) that logs connection principals; stopped at teardown."""
    started: list[ListenerBroker] = []
    # Connection principals are logged at debug level.
    monkeypatch.setenv("RUST_LOG", "info,fjord_server=debug")

    def make(*extra_args: str) -> ListenerBroker:
        base = tmp_path / f"tls{len(started)}"
        b = ListenerBroker(fjord_bin, base / "data", base, extra_args=extra_args,
                           name=f"tls{len(started)}", ssl_port=free_port())
        started.append(b)
        return b.start()

    yield make
    for b in started:
        if b.running:
            b.stop()


def ssl_conf(pki: Pki, bootstrap: str, cert: Path | None = None, key: Path | None = None,
             ca: Path | None = None) -> dict:
    conf = {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(ca or pki.ca),
        "socket.timeout.ms": 10000,
    }
    if cert is not None:
        conf["ssl.certificate.location"] = str(cert)
        conf["ssl.key.location"] = str(key)
    return conf


def produce(conf: dict, topic: str, values: list[bytes], timeout: float = 30.0) -> list:
    """Produce ``values``; returns the delivery errors (empty when all were acked)."""
    errors: list = []
    p = Producer({**conf, "message.timeout.ms": int(timeout * 1000), "acks": "all"})
    for v in values:
        p.produce(topic, v, on_delivery=lambda err, msg: err and errors.append(err))
    remaining = p.flush(timeout + 5)
    assert remaining == 0, f"{remaining} messages neither delivered nor failed"
    return errors


def consume(conf: dict, topic: str, count: int, timeout: float = 30.0) -> list[bytes]:
    c = Consumer({**conf, "group.id": f"g-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    return got


def high_watermark(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    finally:
        c.close()


def server_subject(port: int, ca: Path) -> str:
    """The CN of the certificate the broker presents to a new connection."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            subject = dict(x[0] for x in tls.getpeercert()["subject"])
            return subject["commonName"]


# ------------------------------------------------------------------ tests


def test_clients_use_ssl_and_plaintext_listeners_at_once(tls_broker, pki, topic):
    cert, key = pki.issue("broker", server=True)
    b = tls_broker("--ssl-cert-file", str(cert), "--ssl-key-file", str(key))
    create_topic(b.bootstrap, topic, 1)
    values = [f"v{i}".encode() for i in range(200)]
    conf = ssl_conf(pki, b.ssl_bootstrap)
    assert produce(conf, topic, values) == []

    # Metadata names the address of the listener the client came in on.
    over_ssl = Consumer({**conf, "group.id": "meta"}).list_topics(timeout=10)
    over_plain = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "meta"}).list_topics(
        timeout=10)
    assert [(x.host, x.port) for x in over_ssl.brokers.values()] == [("127.0.0.1", b.ssl_port)]
    assert [(x.host, x.port) for x in over_plain.brokers.values()] == [("127.0.0.1", b.port)]

    assert consume(conf, topic, len(values)) == values
    plain = {"bootstrap.servers": b.bootstrap}
    assert consume(plain, topic, len(values)) == values, "the same log on both listeners"

    if KCAT:
        out = subprocess.run(
            [KCAT, "-b", b.ssl_bootstrap, "-X", "security.protocol=SSL",
             "-X", f"ssl.ca.location={pki.ca}", "-C", "-t", topic, "-e", "-q",
             "-f", "%s\\n"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [v.decode() for v in values]

    # A plaintext client on the SSL port gets no answer it can use.
    with pytest.raises(KafkaException):
        Consumer({"bootstrap.servers": b.ssl_bootstrap, "group.id": "x",
                  "socket.timeout.ms": 3000}).list_topics(timeout=5)


def test_mutual_tls_names_principals_and_refuses_strangers(tls_broker, pki, topic, tmp_path):
    cert, key = pki.issue("broker", server=True)
    b = tls_broker(
        "--ssl-cert-file", str(cert), "--ssl-key-file", str(key),
        "--ssl-client-ca-file", str(pki.ca), "--ssl-client-auth", "required",
        "--ssl-principal-mapping-rules", "RULE:^CN=(.*?),O=Example$/$1/L,DEFAULT",
    )
    create_topic(b.bootstrap, topic, 1)
    writer_cert, writer_key = pki.issue("Writer", server=False)
    conf = ssl_conf(pki, b.ssl_bootstrap, writer_cert, writer_key)
    assert produce(conf, topic, [b"from-writer"]) == []
    assert "principal=User:writer" in b.stderr_path.read_text(), \
        "the certificate's CN, lower-cased by the mapping rule, names the principal"

    if KCAT:
        out = subprocess.run(
            [KCAT, "-b", b.ssl_bootstrap, "-X", "security.protocol=SSL",
             "-X", f"ssl.ca.location={pki.ca}",
             "-X", f"ssl.certificate.location={writer_cert}",
             "-X", f"ssl.key.location={writer_key}", "-C", "-t", topic, "-e", "-q"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["from-writer"]

    stranger = Pki(tmp_path / "stranger", "stranger")
    stranger_cert, stranger_key = stranger.issue("writer", server=False)
    refused = {
        "no client certificate": ssl_conf(pki, b.ssl_bootstrap),
        "a certificate from another CA": ssl_conf(pki, b.ssl_bootstrap, stranger_cert,
                                                  stranger_key),
        "the broker's certificate is not trusted": ssl_conf(
            pki, b.ssl_bootstrap, writer_cert, writer_key, ca=stranger.ca),
    }
    for what, conf in refused.items():
        errors = produce(conf, topic, [f"refused: {what}".encode()], timeout=6)
        assert errors, f"{what}: the message was acked"
    assert high_watermark(b.bootstrap, topic) == 1, "nothing from refused clients is stored"
    log = b.stderr_path.read_text()
    assert "TLS handshake failed" in log


def test_new_certificates_are_picked_up_without_a_restart(tls_broker, pki, topic):
    cert, key = pki.issue("broker", server=True, stem="live")
    b = tls_broker("--ssl-cert-file", str(cert), "--ssl-key-file", str(key),
                   "--ssl-reload-interval-ms", "200")
    create_topic(b.bootstrap, topic, 1)
    producer = Producer({**ssl_conf(pki, b.ssl_bootstrap), "acks": "all"})
    errors: list = []

    def send(v: bytes) -> None:
        producer.produce(topic, v, on_delivery=lambda err, msg: err and errors.append(err))
        assert producer.flush(30) == 0

    send(b"before")
    assert server_subject(b.ssl_port, pki.ca) == "broker"
    # Renewal: a new key and certificate written over the old files.
    pki.issue("broker-renewed", server=True, stem="live")
    deadline = time.monotonic() + 10
    while server_subject(b.ssl_port, pki.ca) != "broker-renewed":
        assert time.monotonic() < deadline, "the new certificate was not picked up in 10 s"
        time.sleep(0.1)
    send(b"after")
    assert errors == []
    assert consume(ssl_conf(pki, b.ssl_bootstrap), topic, 2) == [b"before", b"after"]
    assert "reloaded the certificate files" in b.stderr_path.read_text()


def test_a_cluster_answers_each_listener_with_its_own_addresses(
        tls_broker, pki, topic, postgres_db, s3_endpoint, monkeypatch):
    """Two brokers on PostgreSQL, each with a PLAINTEXT and an SSL listener: every broker
    publishes both addresses, and Metadata through either listener of either broker names
    both brokers at that listener's ports, so SSL clients never fall back to plaintext."""
    use_s3(monkeypatch, s3_endpoint[0])
    cert, key = pki.issue("broker", server=True)
    common = ["--ssl-cert-file", str(cert), "--ssl-key-file", str(key),
              "--coordinator", postgres_db, "--object-store", f"s3://{S3_BUCKET}/tls"]
    brokers = [tls_broker(*common, "--node-id", str(i)) for i in range(2)]
    for b in brokers:
        wait_for_brokers(b.bootstrap, {0, 1})
    plain = {0: brokers[0].port, 1: brokers[1].port}
    secure = {0: brokers[0].ssl_port, 1: brokers[1].ssl_port}
    for b in brokers:
        for conf, ports in [({"bootstrap.servers": b.bootstrap}, plain),
                            (ssl_conf(pki, b.ssl_bootstrap), secure)]:
            meta = Consumer({**conf, "group.id": "meta"}).list_topics(timeout=10)
            seen = {i: (x.host, x.port) for i, x in meta.brokers.items()}
            assert seen == {i: ("127.0.0.1", p) for i, p in ports.items()}, conf
    create_topic(brokers[0].bootstrap, topic, 4)
    values = [f"v{i}".encode() for i in range(400)]
    assert produce(ssl_conf(pki, brokers[1].ssl_bootstrap), topic, values) == []
    got = consume(ssl_conf(pki, brokers[0].ssl_bootstrap), topic, len(values))
    assert sorted(got) == sorted(values)
    registered = psql_listeners(postgres_db)
    assert registered == [
        (0, "PLAINTEXT", brokers[0].port, "SSL", brokers[0].ssl_port),
        (1, "PLAINTEXT", brokers[1].port, "SSL", brokers[1].ssl_port),
    ]


def psql_listeners(url: str) -> list[tuple]:
    from conftest import psql
    rows = psql(url, "SELECT node_id, listeners->0->>'name', listeners->0->>'port', "
                     "listeners->1->>'name', listeners->1->>'port' FROM fjord_brokers "
                     "ORDER BY node_id")
    out = []
    for line in rows.split():
        node, n0, p0, n1, p1 = line.split("|")
        out.append((int(node), n0, int(p0), n1, int(p1)))
    return out


def test_listener_settings_that_cannot_work_are_refused(fjord_bin, tmp_path, pki):
    cert, key = pki.issue("broker", server=True)
    port = free_port()
    cases = {
        "is not served": ["--listener", f"SASL_PLAINTEXT://127.0.0.1:{port}",
                          "--sasl-enabled-mechanisms", "GSSAPI"],
        "no listener uses SASL": ["--connections-max-reauth-ms", "60000"],
        "no authorizer enforces ACLs": ["--super-users", "User:admin"],
        "no listener uses SSL": ["--ssl-cert-file", str(cert), "--ssl-key-file", str(key)],
        "needs ssl_cert_file": ["--listener", f"SSL://127.0.0.1:{port}"],
        "--advertised-listener PLAINTEXT=HOST:PORT": [
            "--listener", f"PLAINTEXT://0.0.0.0:{port}"],
        "holds no PEM private key": [
            "--listener", f"SSL://127.0.0.1:{port}", "--ssl-cert-file", str(cert),
            "--ssl-key-file", str(pki.ca)],
    }
    for expected, args in cases.items():
        out = subprocess.run([str(fjord_bin), "serve", "--data-dir", str(tmp_path / "d"), *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0, f"{args}: started"
        assert expected in out.stderr, f"{args}: {out.stderr[-2000:]}"
