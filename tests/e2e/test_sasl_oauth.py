"""SASL/OAUTHBEARER (KIP-255) end to end: JWTs checked against a JWKS.

The test is its own identity provider: an RSA key made with ``cryptography``, its
public half written as a JWKS file (``--sasl-oauthbearer-jwks-endpoint-url
file://...``), and RS256 tokens signed here (no PyJWT needed). The broker serves
PLAINTEXT (the test's own checks) and SASL_SSL with ``OAUTHBEARER,SCRAM-SHA-512``,
expecting issuer ``https://idp.test`` and audience ``kafka``.

* confluent-kafka with an ``oauth_cb`` returning a signed token and its expiry:
  produce and consume work, and the broker logs the token's principal;
* confluent-kafka with ``sasl.oauthbearer.method=oidc`` against a token endpoint
  served by the test (a tiny ``http.server`` answering POST /token with
  ``{"access_token": ..., "token_type": "bearer", "expires_in": 300}``).
  Debian's kcat (librdkafka 2.0.2) cannot do this: its librdkafka is built
  without libcurl, and ``sasl.oauthbearer.method`` fails with "not supported in
  this build: OAuth/OIDC depends on libcurl and OpenSSL which were not available
  at build time". kcat is used instead to check that librdkafka's default
  *unsecured* token (``alg: none``) is refused;
* an expired token, a token signed by another key and a token for another
  audience are refused with an authentication error, and nothing is stored;
* a key added to the JWKS file (a rotation) is picked up: a token with the new
  ``kid`` is accepted;
* a JWKS served over HTTP, and KIP-368: with ``--connections-max-reauth-ms`` the
  session ends with the token, and the client re-authenticates with fresh tokens
  on the same connection.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conftest import free_port
from kafka_helpers import create_topic
from test_metrics import scrape
from test_sasl import (ADMIN, ADMIN_PW, authentication_failed, pki,  # noqa: F401 (fixtures)
                       refused, sasl_broker, sasl_conf)
from test_tls import consume, high_watermark, produce

KCAT = shutil.which("kcat")
ISSUER = "https://idp.test"
AUDIENCE = "kafka"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


class Issuer:
    """An RSA signing key, its JWK, and RS256 tokens."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": b64(uint(numbers.n)), "e": b64(uint(numbers.e))}

    def token(self, sub: str, lifetime_s: int = 300, aud=AUDIENCE, iss: str = ISSUER,
              kid: str | None = None) -> tuple[str, float]:
        now = int(time.time())
        exp = now + lifetime_s
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        claims = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": exp}
        message = (b64(json.dumps(header).encode()) + "." +
                   b64(json.dumps(claims).encode()))
        signature = self.key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{message}.{b64(signature)}", float(exp)


def write_jwks(path: Path, *issuers: Issuer) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [i.jwk() for i in issuers]}))
    tmp.replace(path)


@pytest.fixture
def idp(tmp_path: Path):
    issuer = Issuer("key-1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, issuer)
    return issuer, jwks


@pytest.fixture
def oauth_broker(sasl_broker, idp):  # noqa: F811 (fixture)
    _, jwks = idp
    port = free_port()
    b = sasl_broker(
        "--sasl-enabled-mechanisms", "OAUTHBEARER,SCRAM-SHA-512",
        "--sasl-oauthbearer-jwks-endpoint-url", f"file://{jwks}",
        "--sasl-oauthbearer-expected-issuer", ISSUER,
        "--sasl-oauthbearer-expected-audience", AUDIENCE,
        "--metrics-listen", f"127.0.0.1:{port}",
    )
    b.metrics_port = port
    return b


def oauth_conf(b, pki, token_fn) -> dict:  # noqa: F811
    """confluent-kafka over SASL_SSL with OAUTHBEARER; ``token_fn()`` gives (token, exp)."""
    return {
        "bootstrap.servers": b.sasl_ssl_bootstrap,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki.ca),
        "sasl.mechanisms": "OAUTHBEARER",
        "oauth_cb": lambda _config: token_fn(),
        "socket.timeout.ms": 10000,
    }


def test_oauthbearer_tokens_from_a_callback(oauth_broker, idp, pki, topic):  # noqa: F811
    issuer, _ = idp
    b = oauth_broker
    create_topic(b.bootstrap, topic, 1)
    values = [f"oauth-{i}".encode() for i in range(50)]
    conf = oauth_conf(b, pki, lambda: issuer.token("svc-orders"))
    assert produce(conf, topic, values) == []
    assert consume(conf, topic, len(values)) == values
    log = b.stderr_path.read_text()
    assert re.search(r"SASL authentication succeeded.*principal=User:svc-orders.*OAUTHBEARER",
                     log), "the token's principal is logged"

    # Refused: expired (beyond the 30 s skew), signed by another key under the same kid,
    # another audience, another issuer, an unknown kid. Nothing they send is stored.
    other = Issuer("key-1")
    refusals = {
        # librdkafka is told a future expiry, or it would not send the token at all.
        "expired": lambda: (issuer.token("svc-orders", lifetime_s=-120)[0], time.time() + 300),
        "another key": lambda: other.token("svc-orders"),
        "wrong audience": lambda: issuer.token("svc-orders", aud="billing"),
        "wrong issuer": lambda: issuer.token("svc-orders", iss="https://evil.test"),
        "unknown kid": lambda: issuer.token("svc-orders", kid="nope"),
    }
    for what, token_fn in refusals.items():
        errors = refused(oauth_conf(b, pki, token_fn), topic, f"refused: {what}".encode())
        assert authentication_failed(errors), (what, errors)
    assert high_watermark(b.bootstrap, topic) == len(values), "nothing refused is stored"
    log = b.stderr_path.read_text()
    for reason in ("token expired", "invalid token signature", "audience is not one of",
                   "is not the expected", "no key with kid"):
        assert reason in log, reason

    # SCRAM still works beside it.
    assert produce(sasl_conf(b, pki, "SCRAM-SHA-512", ADMIN, ADMIN_PW), topic, [b"scram"]) == []


def test_rotated_keys_are_picked_up(oauth_broker, idp, pki, topic):  # noqa: F811
    issuer, jwks = idp
    b = oauth_broker
    create_topic(b.bootstrap, topic, 1)
    rotated = Issuer("key-2")
    write_jwks(jwks, issuer, rotated)
    # An unknown kid makes the broker read the file again at once.
    conf = oauth_conf(b, pki, lambda: rotated.token("svc-rotated"))
    assert produce(conf, topic, [b"after rotation"]) == []
    assert high_watermark(b.bootstrap, topic) == 1
    assert "JWKS loaded" in b.stderr_path.read_text()
    metrics = scrape(b.metrics_port)
    assert metrics["fjord_jwks_reloads_total"] >= 2, metrics  # at start, and the rotation
    assert metrics["fjord_jwks_reload_errors_total"] == 0, metrics


class JwksEndpoint:
    """Serves a JWKS document at GET /jwks."""

    def __init__(self, *issuers: Issuer) -> None:
        document = json.dumps({"keys": [i.jwk() for i in issuers]}).encode()
        self.gets = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.gets += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_jwks_over_http_and_sessions_that_end_with_the_token(sasl_broker, pki, topic):  # noqa: F811
    issuer = Issuer("http-key")
    endpoint = JwksEndpoint(issuer)
    try:
        b = sasl_broker(
            "--sasl-enabled-mechanisms", "OAUTHBEARER",
            "--sasl-oauthbearer-jwks-endpoint-url", endpoint.url,
            "--sasl-oauthbearer-expected-audience", "other,kafka",
            "--connections-max-reauth-ms", "60000",
        )
        assert endpoint.gets >= 1
        create_topic(b.bootstrap, topic, 1)
        issued: list[str] = []

        def short_token():
            token, exp = issuer.token("svc-short", lifetime_s=4)
            issued.append(token)
            return token, exp

        producer = Producer({**oauth_conf(b, pki, short_token), "acks": "all"})
        errors: list = []
        sent = 0
        deadline = time.monotonic() + 9
        while time.monotonic() < deadline:
            producer.produce(topic, f"m{sent}".encode(),
                             on_delivery=lambda err, msg: err and errors.append(err))
            sent += 1
            producer.poll(0.1)
        assert producer.flush(30) == 0
        # The log now, while the producer was polled (it gets fresh tokens only when polled).
        log = b.stderr_path.read_text()
        del producer
        assert errors == []
        assert high_watermark(b.bootstrap, topic) == sent
        logins = [line for line in log.splitlines()
                  if "SASL authentication succeeded" in line and "User:svc-short" in line]
        # Sessions of at most 4 s (the token's life, not the 60 s of reauth) over 9 s: the
        # client re-authenticated with fresh tokens.
        assert len(logins) >= 3, logins
        lifetimes = [int(m) for m in re.findall(r"session_lifetime_ms=(\d+)\b", "\n".join(logins))]
        assert lifetimes and max(lifetimes) <= 4000, lifetimes
        assert len(set(issued)) >= 2
        assert "session expired" not in log
    finally:
        endpoint.close()


class TokenEndpoint:
    """An OAuth token endpoint (client credentials) answering with signed JWTs."""

    def __init__(self, issuer: Issuer, sub: str) -> None:
        outer = self
        self.requests: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length).decode()
                outer.requests.append({"path": self.path, "body": body,
                                       "auth": self.headers.get("authorization", "")})
                if self.path != "/token":
                    self.send_error(404)
                    return
                token, _ = issuer.token(sub)
                answer = json.dumps({"access_token": token, "token_type": "bearer",
                                     "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_oidc_client_credentials_and_unsecured_tokens(oauth_broker, idp, pki, topic):  # noqa: F811
    issuer, _ = idp
    b = oauth_broker
    create_topic(b.bootstrap, topic, 1)
    endpoint = TokenEndpoint(issuer, "svc-oidc")
    try:
        conf = {
            "bootstrap.servers": b.sasl_ssl_bootstrap,
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(pki.ca),
            "sasl.mechanisms": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.token.endpoint.url": endpoint.url,
            "sasl.oauthbearer.client.id": "x",
            "sasl.oauthbearer.client.secret": "y",
        }
        values = [f"oidc-{i}".encode() for i in range(10)]
        assert produce(conf, topic, values) == []
        assert consume(conf, topic, len(values)) == values
        assert endpoint.requests and "grant_type=client_credentials" in endpoint.requests[0][
            "body"]
    finally:
        endpoint.close()
    assert "principal=User:svc-oidc" in b.stderr_path.read_text()

    if KCAT:
        # librdkafka's default OAUTHBEARER token is an unsecured JWT (alg none): refused.
        out = subprocess.run(
            [KCAT, "-b", b.sasl_ssl_bootstrap, "-X", "security.protocol=SASL_SSL",
             "-X", f"ssl.ca.location={pki.ca}", "-X", "sasl.mechanisms=OAUTHBEARER",
             "-X", "sasl.oauthbearer.config=principal=svc-oidc",
             "-X", "enable.sasl.oauthbearer.unsecure.jwt=true",
             "-L", "-m", "10"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, out.stdout
        assert re.search(r"(?i)auth", out.stderr), out.stderr
        assert "token algorithm none is not accepted" in b.stderr_path.read_text()
    assert high_watermark(b.bootstrap, topic) == len(values)

