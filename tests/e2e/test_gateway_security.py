"""The gateway and the forwarder against a SASL_SSL Fjord (issue 16, item 6).

The broker is test_sasl.py's ``sasl_broker`` (PLAINTEXT for the test's own checks,
SASL_SSL, SASL_PLAINTEXT; bootstrap admin ``admin``), optionally with
``--authorizer acl`` as in test_acls.py.

* a gateway whose cluster uses ``security_protocol = "sasl_ssl"`` with a SCRAM-SHA-512
  user and the test CA produces through its gRPC API, and the records are on the
  broker; a gateway with a wrong password fails its messages with an error that says
  authentication failed, and stores nothing;
* with ACLs, the gateway's user gets a per-message REJECTED (topic authorization
  failed) on a topic it may not write, and delivers to topics under a PREFIXED WRITE
  ACL;
* a forwarder consumes as a SCRAM user with READ on the topic and the group (ACLs)
  and delivers every record over mutual TLS to an https:// gRPC receiver that
  trusts only the test CA and requires the forwarder's client certificate;
* the gateway's own listener: mutual TLS with ``[[caller]]`` allowlists and certificate
  reload; bearer tokens (``[auth]``, JWTs against a JWKS file, issued by the test as in
  test_sasl_oauth.py) sent by the Python client's ``token`` option over TLS: a caller
  without a token, with an expired or forged token, or for a topic its ``[[caller]]``
  does not allow is refused; the token's principal is the caller of the rate limits; a
  stream ends when its token expires.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent import futures
from pathlib import Path

import fjord
import grpc
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from conftest import free_port
from forward_helpers import FAST_GROUP, Forwarder, committed, toml_value, wait_until
from gateway_helpers import GatewayProc, gateway_factory, read_cluster  # noqa: F401 (fixture)
from test_acls import AUTHZ, admin_of, allow, create_acls, create_topics
from test_sasl import ADMIN, ADMIN_PW, add_user, sasl_broker, sasl_conf  # noqa: F401 (fixture)
from test_sasl_oauth import ISSUER, Issuer, write_jwks
from test_tls import Pki, pki  # noqa: F401 (fixture)

from fjord.forwarder.v1 import forwarder_pb2 as fpb
from fjord.forwarder.v1 import forwarder_pb2_grpc as fpb_grpc


def gateway_toml(gw: GatewayProc, b, pki: Pki, user: str, password_env: str) -> str:
    """A gateway with one SASL_SSL cluster ``secure`` (SCRAM-SHA-512, the test CA) serving
    every topic; one attempt per message, short timeouts."""
    return "\n".join([
        'gateway_id = "gw-sec"',
        f"listen = {toml_value(gw.address)}",
        f'metrics_listen = "127.0.0.1:{gw.metrics_port}"',
        "reload_poll_ms = 0",
        "[delivery]",
        "attempt_timeout_ms = 4000",
        "delivery_timeout_ms = 8000",
        "max_attempts = 1",
        "[clusters.secure]",
        f"bootstrap_servers = {toml_value(b.sasl_ssl_bootstrap)}",
        'security_protocol = "sasl_ssl"',
        f"tls = {{ ca_location = {toml_value(str(pki.ca))} }}",
        f'sasl = {{ mechanism = "SCRAM-SHA-512", username = {toml_value(user)}, '
        f"password_env = {toml_value(password_env)} }}",
        "[groups.main]",
        "clusters = { secure = 1.0 }",
        "[routes]",
        'default = "main"',
    ]) + "\n"


def start_gateway(gateway_factory, monkeypatch, b, pki, user, password, name="gateway"):
    var = f"GW_SECRET_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(var, password)
    gw = gateway_factory(name)
    return gw.start(gateway_toml(gw, b, pki, user, var))


def values_on(b, topic: str) -> list[bytes]:
    return [r.value for r in read_cluster(b.bootstrap, topic, timeout=15)]


def test_gateway_produces_to_a_sasl_ssl_cluster(sasl_broker, pki, gateway_factory,
                                                monkeypatch, topic):
    b = sasl_broker()
    add_user(b, pki, "gw", "gw-secret")
    create_topics(admin_of(b, pki), topic)
    gw = start_gateway(gateway_factory, monkeypatch, b, pki, "gw", "gw-secret")
    sent = [f"secure-{i}".encode() for i in range(20)]
    with fjord.Publisher(gw.address, retries=0) as pub:
        results = pub.publish_batch(topic, sent)
        assert all(isinstance(r, fjord.Delivered) for r in results), results
        assert {r.cluster for r in results} == {"secure"}
        d = pub.publish(topic, b"one more", key=b"k")
        assert d.cluster == "secure"
    assert sorted(values_on(b, topic)) == sorted(sent + [b"one more"])
    gw.stop()

    # The same gateway with a wrong password: every message fails, the error says why.
    bad = start_gateway(gateway_factory, monkeypatch, b, pki, "gw", "not-the-password",
                        name="bad-password")
    with fjord.Publisher(bad.address, retries=0, timeout=30) as pub:
        results = pub.publish_batch(topic, [b"never stored 1", b"never stored 2"])
    for r in results:
        assert isinstance(r, fjord.Failure), r
        assert "authentication" in r.message.lower(), r
    assert not any(v.startswith(b"never stored") for v in values_on(b, topic))
    bad.stop()


def test_gateway_per_message_acl_failures(sasl_broker, pki, gateway_factory, monkeypatch):
    b = sasl_broker(*AUTHZ)
    admin = admin_of(b, pki)
    add_user(b, pki, "gw", "gw-secret")
    suffix = uuid.uuid4().hex[:6]
    allowed, denied = f"allowed-{suffix}", f"denied-{suffix}"
    create_topics(admin, allowed, denied)
    create_acls(admin, allow(ResourceType.TOPIC, "allowed-", ResourcePatternType.PREFIXED,
                             "gw", AclOperation.WRITE))
    gw = start_gateway(gateway_factory, monkeypatch, b, pki, "gw", "gw-secret")
    with fjord.Publisher(gw.address, retries=0) as pub:
        [r] = pub.publish_batch(denied, [b"not allowed"])
        assert isinstance(r, fjord.Failure), r
        assert r.code == "REJECTED" and not r.retriable, r
        assert "authorization" in r.message.lower(), r
        results = pub.publish_batch(allowed, [b"a1", b"a2", b"a3"])
        assert all(isinstance(r, fjord.Delivered) for r in results), results
    assert values_on(b, denied) == []
    assert sorted(values_on(b, allowed)) == [b"a1", b"a2", b"a3"]
    gw.stop()


# ------------------------------------------------------------------ forwarder


class TlsReceiver(fpb_grpc.RecordHandlerServicer):
    """An https RecordHandler (grpc's own TLS) that requires a client certificate of the
    test CA and records the values delivered and the client identities it saw."""

    def __init__(self, pki: Pki) -> None:
        cert, key = pki.issue("handler", server=True)
        creds = grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=pki.ca.read_bytes(),
            require_client_auth=True,
        )
        self.lock = threading.Lock()
        self.values: list[bytes] = []
        self.peers: set[bytes] = set()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        fpb_grpc.add_RecordHandlerServicer_to_server(self, self.server)
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def Deliver(self, request, context):  # noqa: N802 (gRPC method name)
        with self.lock:
            self.values.append(request.value)
            self.peers.update(context.peer_identities() or [])
        return fpb.Outcome(action=fpb.ACTION_ACK)

    def delivered(self) -> set[bytes]:
        with self.lock:
            return set(self.values)

    def stop(self) -> None:
        self.server.stop(0.5).wait()


def forwarder_toml(metrics_port: int, b, pki: Pki, topic: str, group: str, endpoint: str,
                   client: tuple[Path, Path]) -> str:
    props = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "fw",
        "ssl.ca.location": str(pki.ca),
    }
    lines = [
        f'metrics_listen = "127.0.0.1:{metrics_port}"',
        "shutdown_timeout_secs = 5",
        "[clusters.secure]",
        f"bootstrap = {toml_value(b.sasl_ssl_bootstrap)}",
        "[clusters.secure.properties]",
        *(f"{toml_value(k)} = {toml_value(v)}" for k, v in props.items()),
        # The password from the environment, not the file.
        "[clusters.secure.properties_env]",
        '"sasl.password" = "FW_SASL_PASSWORD"',
        "[[subscription]]",
        'name = "secure"',
        'clusters = ["secure"]',
        f"topics = [{toml_value(topic)}]",
        f"group_id = {toml_value(group)}",
        f"endpoint = {toml_value(endpoint)}",
        f"dead_letter_topic = {toml_value(topic + '.dlq')}",
        "create_topics = false",
        "commit_interval_ms = 200",
        "[subscription.consumer_properties]",
        *(f"{toml_value(k)} = {toml_value(v)}" for k, v in FAST_GROUP.items()),
        "[subscription.tls]",
        f"ca_file = {toml_value(str(pki.ca))}",
        f"cert_file = {toml_value(str(client[0]))}",
        f"key_file = {toml_value(str(client[1]))}",
    ]
    return "\n".join(lines) + "\n"


def test_forwarder_from_sasl_ssl_to_an_mtls_endpoint(sasl_broker, pki, fjord_bin, tmp_path,
                                                     procs, topic, monkeypatch):
    monkeypatch.setenv("FW_SASL_PASSWORD", "fw-secret")
    b = sasl_broker(*AUTHZ, "--group-initial-rebalance-delay-ms", "0")
    admin = admin_of(b, pki)
    add_user(b, pki, "fw", "fw-secret")
    group = f"fw-{topic}"
    create_topics(admin, topic, topic + ".dlq")
    create_acls(
        admin,
        allow(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "fw", AclOperation.READ),
        allow(ResourceType.GROUP, group, ResourcePatternType.LITERAL, "fw", AclOperation.READ),
        # Dead letters (none expected here) are written back to the source cluster.
        allow(ResourceType.TOPIC, topic + ".dlq", ResourcePatternType.LITERAL, "fw",
              AclOperation.WRITE),
    )
    sent = [f"fwd-{i}".encode() for i in range(50)]
    p = Producer(sasl_conf(b, pki, "SCRAM-SHA-512", ADMIN, ADMIN_PW))
    for v in sent:
        p.produce(topic, v)
    assert p.flush(30) == 0

    receiver = TlsReceiver(pki)
    try:
        client = pki.issue("forwarder", server=False)
        port = free_port()
        fw = Forwarder(fjord_bin, tmp_path, port,
                       forwarder_toml(port, b, pki, topic, group,
                                      f"https://127.0.0.1:{receiver.port}", client),
                       name="secure-forwarder")
        procs.append(fw)
        fw.start()
        wait_until(lambda: receiver.delivered() >= set(sent), 60,
                   lambda: f"{len(set(sent) - receiver.delivered())} records not delivered\n"
                           f"{fw.logs()}")
        assert b"forwarder" in receiver.peers, receiver.peers
        assert "a secret is written in the config file" not in fw.logs()
        wait_until(lambda: committed(b.bootstrap, group, topic, [0]) == {0: len(sent)}, 20,
                   "the group's final commit")
        fw.stop()
    finally:
        receiver.stop()


# ------------------------------------------------------------------ gateway listener TLS


def test_gateway_mtls_listener_reloads_its_certificate(broker_factory, gateway_factory,
                                                       tmp_path, topic):
    """The listener's TLS is fjord-tls's: mTLS with a Python (gRPC C-core) client, callers
    limited to their topics by ``[[caller]]``, and a new certificate written over the files is
    served without a restart."""
    from kafka_helpers import create_topic

    a = broker_factory(name="cluster-a")
    create_topic(a.bootstrap, topic, 1)
    pki = Pki(tmp_path / "pki-gw", "gw")
    cert, key = pki.issue("gateway", server=True)
    client_cert, client_key = pki.issue("billing", server=False)
    served_cert, served_key = tmp_path / "served.pem", tmp_path / "served.key"
    served_cert.write_bytes(cert.read_bytes())
    served_key.write_bytes(key.read_bytes())
    gw = gateway_factory()
    # Only the billing certificate may produce, and only to this test's topic.
    callers = ('[[caller]]\nname = "CN=billing,O=Example"\n'
               f'topic_prefixes = [{toml_value(topic[:-4])}]\n')
    gw.start(gw.config(
        clusters={"a": a.bootstrap}, groups={"only": {"a": 1.0}}, default_group="only",
        sections={"tls": {"cert_file": str(served_cert), "key_file": str(served_key),
                          "client_ca_file": str(pki.ca)}},
    ) + callers)

    def creds(ca: Path) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(ca.read_bytes(), client_key.read_bytes(),
                                            client_cert.read_bytes())

    def publish(ca: Path, value: bytes):
        with fjord.Publisher(gw.address, retries=0, timeout=5, credentials=creds(ca)) as pub:
            return pub.publish(topic, value)

    assert publish(pki.ca, b"over mtls").cluster == "a"
    # A topic outside the caller's prefixes: PERMISSION_DENIED, whatever x-fjord-caller says.
    with fjord.Publisher(gw.address, retries=0, timeout=5, credentials=creds(pki.ca),
                         caller_id="admin") as pub:
        with pytest.raises(fjord.GatewayError) as e:
            pub.publish("other-topic", b"not allowed")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED, e.value
    assert "may not produce to topic \"other-topic\"" in e.value.details, e.value
    # Another certificate of the same CA is not a listed caller.
    ops_cert, ops_key = pki.issue("ops", server=False)
    ops = grpc.ssl_channel_credentials(pki.ca.read_bytes(), ops_key.read_bytes(),
                                       ops_cert.read_bytes())
    with fjord.Publisher(gw.address, retries=0, timeout=5, credentials=ops) as pub:
        with pytest.raises(fjord.GatewayError) as e:
            pub.publish(topic, b"not a caller")
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED, e.value
    assert "is not a [[caller]]" in e.value.details, e.value
    # Without a client certificate: refused in the handshake.
    with fjord.Publisher(gw.address, retries=0, timeout=5,
                         credentials=grpc.ssl_channel_credentials(pki.ca.read_bytes())) as pub:
        with pytest.raises(fjord.GatewayError):
            pub.publish(topic, b"no client certificate")

    # A certificate from another CA replaces the served one (key first, then certificate).
    other = Pki(tmp_path / "pki-other", "other")
    new_cert, new_key = other.issue("gateway", server=True)
    served_key.write_bytes(new_key.read_bytes())
    served_cert.write_bytes(new_cert.read_bytes())

    def new_certificate_served() -> bool:
        try:
            return publish(other.ca, b"after reload").cluster == "a"
        except fjord.GatewayError:
            return False

    wait_until(new_certificate_served, 30, lambda: f"the new certificate is not served\n{gw.logs()}")
    with pytest.raises(fjord.GatewayError):
        publish(pki.ca, b"trusting the old CA only")
    values = [r.value for r in read_cluster(a.bootstrap, topic, timeout=15)]
    assert values == [b"over mtls", b"after reload"]
    gw.stop()


def test_gateway_bearer_tokens(broker_factory, gateway_factory, tmp_path, topic):
    """[auth]: callers authenticate with JWTs; the token's principal is checked against
    [[caller]] and named in the rate limits; refusals are UNAUTHENTICATED with the reason."""
    import asyncio

    from kafka_helpers import create_topic

    a = broker_factory(name="cluster-a")
    create_topic(a.bootstrap, topic, 1)
    pki = Pki(tmp_path / "pki-gw", "gw")
    cert, key = pki.issue("gateway", server=True)
    idp = Issuer("gw-key-1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, idp)
    audience = "fjord-gateway"
    gw = gateway_factory()
    # svc-billing may produce to this test's topics; svc-ops too. Each caller may send 5
    # messages at once, then 5 a second. No clock skew, so a token's exp is exact.
    gw.start(gw.config(
        clusters={"a": a.bootstrap}, groups={"only": {"a": 1.0}}, default_group="only",
        sections={
            "tls": {"cert_file": str(cert), "key_file": str(key)},
            "limits": {"caller_messages_per_sec": 5.0, "caller_burst_messages": 5.0},
        },
    ) + "\n".join([
        "[auth]",
        f"jwks_url = {toml_value('file://' + str(jwks))}",
        f"issuer = {toml_value(ISSUER)}",
        f'audience = ["{audience}"]',
        "clock_skew_ms = 0",
        "failed_tokens_per_minute = 5",
        '[[caller]]\nname = "svc-billing"',
        f"topic_prefixes = [{toml_value(topic[:-4])}]",
        '[[caller]]\nname = "svc-ops"',
        f"topics = [{toml_value(topic)}]",
    ]) + "\n")

    def token(sub: str, **kw) -> str:
        return idp.token(sub, aud=audience, **kw)[0]

    def publish(value: bytes, tok=None, to: str = topic, n: int = 1):
        with fjord.Publisher(gw.address, retries=0, timeout=10, token=tok, ca_file=pki.ca,
                             caller_id="anyone") as pub:
            if n == 1:
                return pub.publish(to, value)
            return pub.publish_batch(to, [fjord.Message(value) for _ in range(n)])

    assert publish(b"with a token", token("svc-billing")).cluster == "a"

    refusals = {
        "no token": (None, "bearer token is required"),
        "expired": (token("svc-billing", lifetime_s=-5), "expired"),
        "forged": (Issuer("gw-key-1").token("svc-billing", aud=audience)[0], "signature"),
        "other audience": (idp.token("svc-billing", aud="kafka")[0], "aud"),
    }
    for what, (tok, reason) in refusals.items():
        with pytest.raises(fjord.Unauthenticated) as e:
            publish(f"refused: {what}".encode(), tok)
        assert reason in e.value.details, (what, e.value)
    # A valid token, but a topic the caller is not allowed.
    with pytest.raises(fjord.PermissionDenied) as e:
        publish(b"elsewhere", token("svc-billing"), to="other-topic")
    assert 'caller "svc-billing" may not produce to topic "other-topic"' in e.value.details
    # A principal that is no [[caller]].
    with pytest.raises(fjord.PermissionDenied) as e:
        publish(b"stranger", token("svc-stranger"))
    assert "is not a [[caller]]" in e.value.details

    # The rate limits count per principal, whatever x-fjord-caller says: svc-billing spends
    # its burst, and its next batch is refused; svc-ops still has its own.
    billing = token("svc-billing")
    time.sleep(1.2)  # the bucket is full again
    assert all(isinstance(r, fjord.Delivered) for r in publish(b"burst", billing, n=5))
    with pytest.raises(fjord.GatewayError) as e:
        publish(b"over", billing, n=5)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert 'caller "svc-billing"' in e.value.details, e.value
    assert all(isinstance(r, fjord.Delivered) for r in publish(b"ops", token("svc-ops"), n=5))

    # A stream authenticated by a token ends when the token expires.
    async def stream_until_expiry() -> None:
        short = token("svc-ops", lifetime_s=2)
        async with fjord.AsyncPublisher(gw.address, token=short, ca_file=pki.ca,
                                        timeout=10) as pub:
            await pub.publish(topic, b"stream, fresh token")
            await asyncio.sleep(3.5)
            with pytest.raises(fjord.Unauthenticated) as e:
                await pub.publish(topic, b"stream, expired token")
            assert "expired" in e.value.details, e.value

    time.sleep(1.2)  # svc-ops's bucket has room again
    asyncio.run(stream_until_expiry())

    values = sorted(r.value for r in read_cluster(a.bootstrap, topic, timeout=15))
    assert values == sorted([b"with a token"] + [b"burst"] * 5 + [b"ops"] * 5
                            + [b"stream, fresh token"]), values

    # Failed tokens are limited per address (5 a minute here): after a few more forged ones,
    # even a valid token not seen before is refused unchecked, with RESOURCE_EXHAUSTED; a token
    # accepted before still works.
    forged = Issuer("gw-key-1").token("svc-billing", aud=audience)[0]
    for _ in range(10):
        try:
            publish(b"forged", forged)
        except fjord.Unauthenticated:
            continue
        except fjord.GatewayError as e:
            assert e.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e
            break
    else:
        pytest.fail("ten forged tokens in a row were all checked")
    with pytest.raises(fjord.GatewayError) as e:
        publish(b"fresh but throttled", token("svc-billing"))
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    assert "too many failed bearer tokens" in e.value.details, e.value
    time.sleep(1.2)  # svc-billing's rate bucket has room again
    assert isinstance(publish(b"known token", billing), fjord.Delivered)
    assert gw.metric("fjord_gateway_authentications_total", result="throttled") >= 2
    assert gw.metric("fjord_gateway_authentications_total", result="refused") >= 5
    assert gw.metric("fjord_gateway_authentications_total", result="ok") >= 4
    assert gw.metric("fjord_gateway_jwks_reloads_total") == 1
    assert gw.metric("fjord_gateway_jwks_reload_errors_total") == 0
    logs = gw.logs()
    assert "gateway caller refused" in logs and "fjord::audit" in logs, logs[-2000:]
    gw.stop()
