"""The Python client (clients/python, package ``fjord``) against in-process fake gRPC peers:
timing-precise cases of the receiving side (``fjord.serve``) and the publishers that need no
broker or gateway process."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import grpc
import pytest

from forward_helpers import REPO_ROOT  # also puts clients/python on sys.path
import fjord
import fjord.receive
from fjord.forwarder.v1 import forwarder_pb2 as fpb
from fjord.forwarder.v1 import forwarder_pb2_grpc as fpb_grpc
from fjord.gateway.v1 import gateway_pb2 as gpb
from fjord.gateway.v1 import gateway_pb2_grpc as gpb_grpc


def delivery(value: bytes, offset: int = 0) -> fpb.Delivery:
    return fpb.Delivery(topic="orders", partition=0, offset=offset, value=value, attempt=1)


# --------------------------------------------------------------------------- fjord.serve


async def _process(seen: List[Any], record: fjord.Record, tag: str = "") -> None:
    await asyncio.sleep(0.01)  # really suspends: an unawaited coroutine never gets past here
    seen.append((record.value, asyncio.get_running_loop()))
    if record.value == b"dead":
        raise fjord.DeadLetter("bad record")
    if record.value == b"boom":
        raise ValueError("exploded")


def _sync_decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator written for sync functions (logging, metrics): it returns what fn returns."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class _AsyncCallable:
    def __init__(self, seen: List[Any]) -> None:
        self.seen = seen

    async def __call__(self, record: fjord.Record) -> None:
        await _process(self.seen, record)


HANDLER_SHAPES = {
    "lambda": lambda seen: (lambda record: _process(seen, record)),
    "sync-decorator": lambda seen: _sync_decorator(functools.partial(_process, seen)),
    "partial": lambda seen: functools.partial(_process, seen, tag="x"),
    "async-call-object": lambda seen: _AsyncCallable(seen),
}


@pytest.mark.parametrize("shape", list(HANDLER_SHAPES))
def test_serve_runs_awaitables_returned_by_plain_callables(shape):
    """Item 10: a handler that returns a coroutine without being an ``async def`` (a lambda, a sync
    decorator around one, ...) must have the coroutine run: its outcome is the coroutine's, and
    no record is ACKed unprocessed."""
    seen: List[Any] = []
    server = fjord.serve(HANDLER_SHAPES[shape](seen), port=0, block=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fpb_grpc.RecordHandlerStub(channel)
            ok = stub.Deliver(delivery(b"fine"), timeout=10)
            dead = stub.Deliver(delivery(b"dead"), timeout=10)
            boom = stub.Deliver(delivery(b"boom"), timeout=10)
            again = stub.Deliver(delivery(b"again"), timeout=10)
    finally:
        server.stop()
    assert ok.action == fpb.ACTION_ACK
    assert (dead.action, dead.reason) == (fpb.ACTION_DEAD_LETTER, "bad record")
    assert boom.action == fpb.ACTION_RETRY and "ValueError: exploded" in boom.reason
    assert again.action == fpb.ACTION_ACK
    assert [v for v, _ in seen] == [b"fine", b"dead", b"boom", b"again"], "every record processed"
    loops = {id(loop) for _, loop in seen}
    assert len(loops) == 1, "all awaitables of one server run on the same event loop"


def test_serve_stop_fails_awaitables_still_running():
    """A sync-served awaitable still running at stop is cancelled: its caller gets no ACK and the
    server's threads end (nothing waits forever on a stopped loop)."""
    started = threading.Event()

    async def forever(record: fjord.Record) -> None:
        started.set()
        await asyncio.sleep(3600)

    server = fjord.serve(lambda record: forever(record), port=0, block=False)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = fpb_grpc.RecordHandlerStub(channel).Deliver.future(delivery(b"x"), timeout=30)
        assert started.wait(10)
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.2})
        stopper.start()
        stopper.join(10)
        assert not stopper.is_alive(), "stop() returned"
        with pytest.raises(grpc.RpcError) as failed:
            call.result(timeout=10)
        # The forwarder retries either status; what matters is that it is not an ACK.
        assert failed.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


# --------------------------------------------------------------------------- publishers


class FakeGateway(gpb_grpc.GatewayServicer):
    """An in-process gateway: stores what it reads (in order) and answers after
    ``delays[value]`` seconds, or once ``release`` is set while it is clear."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: List[bytes] = []
        self.delays: Dict[bytes, float] = {}
        self.release = threading.Event()
        self.release.set()
        self.unary: List[Callable[[gpb.ProduceBatchRequest, Any], gpb.ProduceBatchResponse]] = []
        #: The connection (peer) each value came over.
        self.peer_of: Dict[bytes, str] = {}
        #: The invocation metadata of every call (unary or stream), in order.
        self.metadata: List[Dict[str, str]] = []
        #: The common name of the client certificate of every call (mTLS), in order.
        self.client_names: List[str] = []
        #: Set: ProduceStream fails with this status after reading its first request.
        self.stream_abort: Any = None

    def _called(self, context: Any) -> None:
        names = context.auth_context().get("x509_common_name", [b""])
        with self.lock:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})
            self.client_names.append(names[0].decode())

    def _store(self, batch: gpb.ProduceBatchRequest, context: Any) -> List[gpb.MessageResult]:
        values = [m.value for m in batch.messages]
        with self.lock:
            self.received.extend(values)
            self.peer_of.update((v, context.peer()) for v in values)
        time.sleep(max(self.delays.get(v, 0.0) for v in values))
        self.release.wait(30)
        return [gpb.MessageResult(delivered=gpb.Delivered(cluster="a", offset=i))
                for i, _ in enumerate(values)]

    def ProduceStream(self, requests, context):
        self._called(context)
        for req in requests:
            if self.stream_abort is not None:
                context.abort(self.stream_abort, "refused by the fake gateway")
            yield gpb.ProduceStreamResponse(request_id=req.request_id, results=self._store(req.batch, context))

    def ProduceBatch(self, request, context):
        self._called(context)
        if self.unary:
            return self.unary.pop(0)(request, context)
        return gpb.ProduceBatchResponse(results=self._store(request, context))


def serve_fake_gateway(credentials: Any = None) -> Any:
    """A started FakeGateway on 127.0.0.1 (over TLS with server ``credentials``): (fake, server);
    ``fake.address`` is its ``host:port``."""
    fake = FakeGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    gpb_grpc.add_GatewayServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    fake.address = f"127.0.0.1:{port}"
    return fake, server


@pytest.fixture
def gateway():
    fake, server = serve_fake_gateway()
    yield fake
    fake.release.set()
    server.stop(0).wait()


def test_async_publisher_never_writes_a_batch_it_reported_failed(gateway):
    """Item 11: a batch whose deadline passes while it waits for an in-flight slot fails as
    "nothing produced" and must then never be written; the batch that was on the wire when its
    deadline passed is reported as outcome unknown."""
    gateway.delays[b"slow"] = 1.2  # answered long after the 0.5 s timeout

    async def main():
        async with fjord.AsyncPublisher(gateway.address, timeout=0.5, max_in_flight=1,
                                        linger_ms=1) as pub:
            slow = asyncio.ensure_future(pub.publish("t", b"slow"))
            await asyncio.sleep(0.1)  # "slow" is on the wire and holds the only slot
            queued = asyncio.ensure_future(pub.publish("t", b"queued"))
            results = await asyncio.gather(slow, queued, return_exceptions=True)
            await asyncio.sleep(1.5)  # "slow" is answered by now: its slot is free again
            after = await pub.publish("t", b"after")
            return results, after

    (slow, queued), after = asyncio.run(main())
    assert gateway.received == [b"slow", b"after"], (
        "the batch reported failed (nothing produced) was written afterwards")
    assert isinstance(queued, fjord.GatewayUnavailable) and not queued.outcome_unknown, queued
    assert queued.code == grpc.StatusCode.DEADLINE_EXCEEDED and queued.retriable
    assert isinstance(slow, fjord.OutcomeUnknown) and slow.outcome_unknown, slow
    assert isinstance(after, fjord.Delivered)


def test_async_publisher_bounds_queued_messages(gateway):
    """Item 11: messages not yet sent are bounded: ``send`` raises QueueFull beyond the bound,
    ``publish`` waits for room (and raises QueueFull if none comes within its timeout)."""
    gateway.release.clear()  # the gateway answers nothing until released

    async def main():
        async with fjord.AsyncPublisher(gateway.address, timeout=10, max_in_flight=1,
                                        max_batch_messages=1, max_queued_messages=3,
                                        linger_ms=1) as pub:
            sent = [pub.send("t", fjord.Message(b"m0"))]
            await asyncio.sleep(0.2)  # m0 is on the wire, holding the only slot
            sent += [pub.send("t", fjord.Message(v)) for v in (b"m1", b"m2", b"m3")]
            with pytest.raises(fjord.QueueFull) as full:
                pub.send("t", fjord.Message(b"m4"))
            assert full.value.retriable and not full.value.outcome_unknown
            waiting = asyncio.ensure_future(pub.publish("t", b"m5"))
            await asyncio.sleep(0.3)
            assert not waiting.done(), "publish waits for room"
            pub.timeout = 0.2  # a publish that finds no room within its timeout gives up
            with pytest.raises(fjord.QueueFull):
                await pub.publish("t", b"m6")
            pub.timeout = 10
            assert gateway.received == [b"m0"]
            gateway.release.set()
            results = await asyncio.gather(*sent)
            return results, await waiting

    results, last = asyncio.run(main())
    assert all(isinstance(r, fjord.Delivered) for r in results) and isinstance(last, fjord.Delivered)
    assert gateway.received == [b"m0", b"m1", b"m2", b"m3", b"m5"]


class _FakeCall:
    """A ProduceStream call for :class:`_FakeStub`: ``end_during_write`` ends the stream
    (UNAVAILABLE) while a write is under way; otherwise writes are taken and never answered."""

    def __init__(self, end_during_write: bool) -> None:
        self.end_during_write = end_during_write
        self.writes: List[gpb.ProduceStreamRequest] = []
        self.writing = asyncio.Event()
        self.ended = asyncio.Event()

    def _error(self) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(),
                                    grpc.aio.Metadata(), details="connection reset")

    async def write(self, request):
        self.writes.append(request)
        if self.end_during_write:
            self.writing.set()
            await self.ended.wait()
            raise self._error()

    async def read(self):
        if self.end_during_write:
            await self.writing.wait()
            self.ended.set()
            raise self._error()
        await asyncio.Event().wait()  # never answers

    def done(self) -> bool:
        return self.ended.is_set()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    async def done_writing(self) -> None:
        pass


class _FakeStub:
    def __init__(self, calls: List[_FakeCall]) -> None:
        self.calls = calls
        self.opened = 0

    def ProduceStream(self, metadata=()):
        call = self.calls[self.opened]
        self.opened += 1
        return call


def test_async_publisher_releases_a_slot_once_when_the_stream_ends_during_a_write(gateway):
    """Item 11: a stream that ends while a batch is being written frees that batch's in-flight
    slot once, not twice (twice would let max_in_flight + 1 batches out)."""

    async def main():
        # The channel connects to the fake gateway; the streams are fakes (white box: _stub is
        # the one place the publisher opens calls).
        pub = fjord.AsyncPublisher(gateway.address, timeout=5, max_in_flight=1,
                                   max_batch_messages=1, linger_ms=1)
        broken, fresh = _FakeCall(end_during_write=True), _FakeCall(end_during_write=False)
        pub._stub = _FakeStub([broken, fresh])
        first = pub.send("t", fjord.Message(b"a"))
        with pytest.raises(fjord.GatewayError) as failed:
            await first
        later = [pub.send("t", fjord.Message(v)) for v in (b"b", b"c")]
        await asyncio.sleep(0.3)
        written = [r.batch.messages[0].value for r in fresh.writes]
        for f in later:
            f.cancel()
        pub._closed = True
        await pub._channel.close()
        return failed.value, written

    error, written = asyncio.run(main())
    assert written == [b"b"], "one slot: one unanswered batch at a time"
    assert error.outcome_unknown, "a batch written when its stream broke may have been stored"


def test_publisher_says_outcome_unknown_after_a_timed_out_attempt(gateway):
    """Item 11, sync: once an attempt timed out (the gateway may have stored the batch), the
    error finally raised must not say "nothing produced", whatever the last attempt's status."""

    def slow(request, context):
        time.sleep(0.6)  # past the client's deadline; "stored" all the same
        return gpb.ProduceBatchResponse()

    def refuse(request, context):
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit")

    with fjord.Publisher(gateway.address, timeout=0.3, retries=0) as pub:
        gateway.unary[:] = [slow]
        with pytest.raises(fjord.GatewayError) as timed_out:
            pub.publish_batch("t", [b"x"])
        assert isinstance(timed_out.value, fjord.OutcomeUnknown), timed_out.value
    with fjord.Publisher(gateway.address, timeout=0.3, retries=1, retry_backoff=0.01) as pub:
        gateway.unary[:] = [slow, refuse]
        with pytest.raises(fjord.GatewayError) as last_refused:
            pub.publish_batch("t", [b"x"])
        assert last_refused.value.outcome_unknown, last_refused.value
        assert last_refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    def failure(code):
        def answer(request, context):
            return gpb.ProduceBatchResponse(results=[gpb.MessageResult(
                failure=gpb.Failure(code=code, message="m", retriable=True))])
        return answer

    with fjord.Publisher(gateway.address, timeout=5, retries=1, retry_backoff=0.01) as pub:
        gateway.unary[:] = [failure(gpb.ERROR_CODE_TIMEOUT),
                            failure(gpb.ERROR_CODE_NO_HEALTHY_CLUSTER)]
        with pytest.raises(fjord.PublishError) as publish_failed:
            pub.publish("t", b"x")
        assert publish_failed.value.code == "NO_HEALTHY_CLUSTER"
        assert publish_failed.value.outcome_unknown, "the first attempt's TIMEOUT may have stored it"


def test_async_publisher_unreachable_gateway_means_nothing_sent():
    """A gateway that cannot be reached fails the batch at once as "nothing produced" (the
    publisher waits for a connection before it writes), not as outcome unknown."""
    from conftest import free_port

    async def main():
        async with fjord.AsyncPublisher(f"127.0.0.1:{free_port()}", timeout=5) as pub:
            started = time.monotonic()
            with pytest.raises(fjord.GatewayUnavailable) as failed:
                await pub.publish("t", b"v")
            return failed.value, time.monotonic() - started

    error, took = asyncio.run(main())
    assert error.code == grpc.StatusCode.UNAVAILABLE and not error.outcome_unknown, error
    assert took < 4, f"failed fast, not at the deadline ({took:.1f}s)"


# --------------------------------------------------------------------------- fork, threads


def run_fork_scenario(name: str, address: str) -> Dict[str, Any]:
    """Runs a scenario of fork_helpers.py in a process of its own (see there why)."""
    helper = Path(__file__).with_name("fork_helpers.py")
    done = subprocess.run([sys.executable, str(helper), name, address], capture_output=True,
                          text=True, timeout=60, cwd=helper.parent)
    assert done.returncode == 0, f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_publish_in_a_child_forked_while_the_default_publisher_lock_was_held(gateway):
    """Item 12: a fork while another thread creates the shared Publisher (holding its lock) must
    not leave ``fjord.publish`` in the child waiting for that lock forever."""
    out = run_fork_scenario("default-lock-held", gateway.address)
    assert out["child"].startswith("Delivered("), out
    assert gateway.received == [b"from-child"]


def test_publisher_used_before_fork_works_in_the_child(gateway):
    """Item 12: a Publisher used in the parent is usable in a forked child (over a connection of
    the child's own) and still in the parent afterwards."""
    out = run_fork_scenario("used-before-fork", gateway.address)
    assert out["child"].startswith("Delivered("), out
    assert all(r.startswith("Delivered(") for r in out["parent"]), out
    assert gateway.received == [b"parent-1", b"child", b"parent-2"]
    assert gateway.peer_of[b"child"] != gateway.peer_of[b"parent-1"], "the child's own connection"
    assert gateway.peer_of[b"parent-2"] == gateway.peer_of[b"parent-1"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_publisher_created_in_a_forked_child_works(gateway, kind):
    """Item 12: a publisher created in a child forked from a process connected to the same
    gateway must not pick up the parent's connection from gRPC's process-wide pool (its socket
    fails in the child: "Wrong file descriptor generation")."""
    out = run_fork_scenario(f"created-in-child-{kind}", gateway.address)
    assert all(c.startswith("Delivered(") for c in out["children"]), out
    assert gateway.received == [b"parent-1", b"child", b"child", b"child", b"parent-2"]


def test_async_publisher_in_a_forked_child_fails_clearly_and_sends_nothing_inherited(gateway):
    """Item 12: an AsyncPublisher cannot work in a forked child (its channel and event loop are
    the parent's): calls fail at once with a clear error, and closing it there must not send the
    messages the parent had queued (the parent sends them: they would be stored twice)."""
    out = run_fork_scenario("async-inherited", gateway.address)
    took, message = out["child"].split(" ", 1)
    assert "forked child" in message and float(took) < 1, out
    assert out["parent"].startswith("Delivered("), out
    assert gateway.received == [b"parent-queued"], "sent once, by the parent"


def _forwarder_default_concurrency() -> int:
    config = REPO_ROOT / "crates" / "fjord-forwarder" / "src" / "config.rs"
    found = re.search(r"pub fn concurrency\(\) -> usize \{\s*([\d_]+)\s*\}", config.read_text())
    assert found, "defaults::concurrency() not found in the forwarder's config.rs"
    return int(found.group(1).replace("_", ""))


def test_serve_default_threads_match_the_forwarders_default_concurrency():
    """Item 12: by default the sync server has a thread for each delivery the forwarder has in
    flight (its default per-subscription ``concurrency``)."""
    default = inspect.signature(fjord.serve).parameters["max_concurrency"].default
    assert default == _forwarder_default_concurrency()


def test_serve_queues_deliveries_beyond_its_threads():
    """Item 12: more concurrent deliveries than threads wait for a thread (none is dropped or
    ACKed unprocessed); one whose deadline passes while it waits is not run."""
    lock = threading.Lock()
    running, most, processed = [0], [0], []
    release = threading.Event()

    def handler(record: fjord.Record) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        release.wait(20)
        with lock:
            running[0] -= 1
            processed.append(record.offset)

    server = fjord.serve(handler, port=0, block=False, max_concurrency=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = fpb_grpc.RecordHandlerStub(channel)
            calls = [stub.Deliver.future(delivery(b"v", offset=i), timeout=20) for i in range(8)]
            time.sleep(0.5)
            expired = stub.Deliver.future(delivery(b"late", offset=99), timeout=0.3)
            with pytest.raises(grpc.RpcError) as late:
                expired.result(timeout=10)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            release.set()
            outcomes = [c.result(timeout=20) for c in calls]
            time.sleep(0.3)
    finally:
        server.stop()
    assert most[0] == 2
    assert all(o.action == fpb.ACTION_ACK for o in outcomes)
    assert sorted(processed) == list(range(8)), "every queued delivery ran once; the expired one not"


# --------------------------------------------------------------------------- TLS and tokens


SECURITY_ENV = ("FJORD_GATEWAY_TOKEN", "FJORD_GATEWAY_CA_FILE", "FJORD_GATEWAY_CERT_FILE",
                "FJORD_GATEWAY_KEY_FILE")


class LocalPki:
    """A throwaway CA (made with ``cryptography``, EC keys) that issued a server certificate for
    ``localhost``/127.0.0.1, one for ``other.example`` only, and a client certificate (CN
    ``billing``); PEM files in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._ca_key = self._key()
        self._ca = self._cert("Test CA", self._ca_key, ca=True)
        self.ca = self._write("ca.pem", self._ca)
        self.server_cert, self.server_key = self.issue("localhost", ["localhost", "127.0.0.1"],
                                                       server=True)
        self.other_cert, self.other_key = self.issue("other", ["other.example"], server=True)
        self.client_cert, self.client_key = self.issue("billing", [], server=False)

    @staticmethod
    def _key() -> Any:
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.generate_private_key(ec.SECP256R1())

    def _cert(self, cn: str, key: Any, ca: bool = False, names: Sequence[str] = (),
              server: bool = False) -> Any:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(subject if ca else self._ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if names:
            sans: List[Any] = []
            for n in names:
                try:
                    sans.append(x509.IPAddress(ipaddress.ip_address(n)))
                except ValueError:
                    sans.append(x509.DNSName(n))
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(key if ca else self._ca_key, hashes.SHA256())

    def _write(self, name: str, cert: Any) -> Path:
        from cryptography.hazmat.primitives import serialization

        path = self.dir / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(self, cn: str, names: Sequence[str], server: bool) -> Tuple[Path, Path]:
        """A certificate of this CA and its key: (cert file, key file)."""
        from cryptography.hazmat.primitives import serialization

        key = self._key()
        cert = self._write(f"{cn}.pem", self._cert(cn, key, names=names, server=server))
        key_file = self.dir / f"{cn}.key"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert, key_file

    def server_credentials(self, require_client_auth: bool = False,
                           other: bool = False) -> grpc.ServerCredentials:
        cert, key = (self.other_cert, self.other_key) if other else (self.server_cert,
                                                                     self.server_key)
        return grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=self.ca.read_bytes() if require_client_auth else None,
            require_client_auth=require_client_auth)


@pytest.fixture(scope="module")
def test_pki(tmp_path_factory):
    pytest.importorskip("cryptography")
    return LocalPki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_gateway(test_pki, monkeypatch):
    """Factory: ``tls_gateway(require_client_auth=False, other=False)`` starts a FakeGateway over
    TLS (``other``: with the certificate for ``other.example`` only); stopped at teardown. The
    FJORD_GATEWAY_* security variables are cleared for the test."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    started = []

    def start(require_client_auth: bool = False, other: bool = False) -> FakeGateway:
        fake, server = serve_fake_gateway(test_pki.server_credentials(require_client_auth, other))
        started.append((fake, server))
        return fake

    yield start
    for fake, server in started:
        fake.release.set()
        server.stop(0).wait()


def test_publisher_sends_a_bearer_token_over_tls(tls_gateway, test_pki):
    """(a) A token is sent as ``authorization: Bearer <token>`` over TLS verified by ca_file,
    next to the caller id."""
    gw = tls_gateway()
    with fjord.Publisher(gw.address, token="t1", ca_file=str(test_pki.ca), caller_id="billing",
                         timeout=5, retries=0) as pub:
        assert isinstance(pub.publish("t", b"v"), fjord.Delivered)
    assert gw.received == [b"v"]
    assert gw.metadata[-1]["authorization"] == "Bearer t1"
    assert gw.metadata[-1]["x-fjord-caller"] == "billing"


def test_publisher_calls_a_token_function_for_every_call(tls_gateway, test_pki):
    """(b) A token function is called for every call: a refreshed token is picked up. One that
    raises fails the call at once as Unauthenticated, naming its error, without retrying."""
    gw = tls_gateway()
    tokens = iter(["t1", "t2"])
    called: List[str] = []

    def token() -> str:
        called.append("x")
        return next(tokens)

    with fjord.Publisher(gw.address, token=token, ca_file=str(test_pki.ca), timeout=5) as pub:
        pub.publish("t", b"one")
        pub.publish("t", b"two")
        with pytest.raises(fjord.Unauthenticated) as failed:  # the iterator is exhausted
            pub.publish("t", b"three")
    assert [m["authorization"] for m in gw.metadata] == ["Bearer t1", "Bearer t2"]
    assert gw.received == [b"one", b"two"]
    assert len(called) == 3, "the failing token function was not retried"
    assert "StopIteration" in str(failed.value) and not failed.value.retriable
    assert not failed.value.outcome_unknown


def test_async_publisher_sends_a_token_on_its_stream(tls_gateway, test_pki):
    """(c) The AsyncPublisher's ProduceStream carries the token; a token function that raises
    fails the batch as Unauthenticated, nothing produced."""
    gw = tls_gateway()

    def broken() -> str:
        raise RuntimeError("vault unreachable")

    async def main():
        async with fjord.AsyncPublisher(gw.address, token=lambda: "t-async",
                                        ca_file=str(test_pki.ca), timeout=5, linger_ms=1) as pub:
            delivered = await pub.publish("t", b"async")
        async with fjord.AsyncPublisher(gw.address, token=broken, ca_file=str(test_pki.ca),
                                        timeout=5, linger_ms=1) as pub:
            with pytest.raises(fjord.Unauthenticated) as failed:
                await pub.publish("t", b"never")
        return delivered, failed.value

    delivered, error = asyncio.run(main())
    assert isinstance(delivered, fjord.Delivered)
    assert gw.metadata[0]["authorization"] == "Bearer t-async"
    assert gw.received == [b"async"]
    assert "vault unreachable" in str(error) and not error.outcome_unknown, error


@pytest.mark.parametrize("code, error", [
    (grpc.StatusCode.UNAUTHENTICATED, fjord.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, fjord.PermissionDenied),
])
def test_refused_credentials_raise_without_retrying(tls_gateway, test_pki, code, error):
    """(d) UNAUTHENTICATED / PERMISSION_DENIED raise their own GatewayError, not retriable, after
    one call (sync); the AsyncPublisher fails the batch with the same class."""
    gw = tls_gateway()

    def refuse(request, context):
        context.abort(code, "no")

    gw.unary[:] = [refuse, refuse, refuse, refuse]
    with fjord.Publisher(gw.address, token="bad", ca_file=str(test_pki.ca), timeout=5,
                         retries=3, retry_backoff=0.01) as pub:
        with pytest.raises(error) as raised:
            pub.publish("t", b"v")
    assert isinstance(raised.value, fjord.GatewayError) and raised.value.code == code
    assert not raised.value.retriable and not raised.value.outcome_unknown
    assert len(gw.metadata) == 1, "not retried"

    gw.stream_abort = code

    async def main():
        async with fjord.AsyncPublisher(gw.address, token="bad", ca_file=str(test_pki.ca),
                                        timeout=5, linger_ms=1) as pub:
            with pytest.raises(error) as failed:
                await pub.publish("t", b"async")
            return failed.value

    assert not asyncio.run(main()).outcome_unknown


def test_mutual_tls_with_a_client_certificate(tls_gateway, test_pki):
    """(e) A gateway that requires client certificates takes cert_file/key_file (and sees the
    certificate's name); without one the call fails."""
    gw = tls_gateway(require_client_auth=True)
    with fjord.Publisher(gw.address, ca_file=str(test_pki.ca), cert_file=str(test_pki.client_cert),
                         key_file=str(test_pki.client_key), token="t1", timeout=5) as pub:
        assert isinstance(pub.publish("t", b"mtls"), fjord.Delivered)
    assert gw.client_names == ["billing"]
    assert gw.metadata[0]["authorization"] == "Bearer t1"
    with fjord.Publisher(gw.address, ca_file=str(test_pki.ca), timeout=5, retries=0) as pub:
        with pytest.raises(fjord.GatewayError):
            pub.publish("t", b"no client certificate")
    assert gw.received == [b"mtls"]


def test_server_name_overrides_the_name_checked(tls_gateway, test_pki):
    """A gateway whose certificate names neither its address nor ``localhost``: refused, unless
    ``server_name`` says which name to check."""
    gw = tls_gateway(other=True)
    with fjord.Publisher(gw.address, ca_file=str(test_pki.ca), timeout=5, retries=0) as pub:
        with pytest.raises(fjord.GatewayUnavailable):
            pub.publish("t", b"wrong name")
    with fjord.Publisher(gw.address, ca_file=test_pki.ca, server_name="other.example",
                         timeout=5, retries=0) as pub:
        assert isinstance(pub.publish("t", b"right name"), fjord.Delivered)
    assert gw.received == [b"right name"]


def test_environment_defaults_for_token_and_files(tls_gateway, test_pki, monkeypatch):
    """(f) ``fjord.publish`` with nothing but the environment: address, token, CA file and the
    client certificate pair come from FJORD_GATEWAY_*; an explicit argument wins."""
    gw = tls_gateway(require_client_auth=True)
    monkeypatch.setenv("FJORD_GATEWAY_ADDRESS", gw.address)
    monkeypatch.setenv("FJORD_GATEWAY_TOKEN", "from-env\n")  # as read from a file
    monkeypatch.setenv("FJORD_GATEWAY_CA_FILE", str(test_pki.ca))
    monkeypatch.setenv("FJORD_GATEWAY_CERT_FILE", str(test_pki.client_cert))
    monkeypatch.setenv("FJORD_GATEWAY_KEY_FILE", str(test_pki.client_key))
    monkeypatch.setattr(fjord.publisher, "_default", None)  # a shared Publisher made here
    try:
        assert isinstance(fjord.publish("t", b"env"), fjord.Delivered)
    finally:
        shared = fjord.publisher._default
        if shared is not None:
            shared.close()
    with fjord.Publisher(token="explicit", timeout=5) as pub:
        pub.publish("t", b"explicit")
    assert [m["authorization"] for m in gw.metadata] == ["Bearer from-env", "Bearer explicit"]
    assert gw.client_names == ["billing", "billing"]


def test_security_options_that_cannot_work_raise_at_once(test_pki, tmp_path, monkeypatch):
    """(g) Certificate without key (or the reverse), credentials with files, server_name without
    TLS, unreadable or non-PEM files: errors at construction that name the problem."""
    for name in SECURITY_ENV:
        monkeypatch.delenv(name, raising=False)
    ca, cert, key = str(test_pki.ca), str(test_pki.client_cert), str(test_pki.client_key)
    with pytest.raises(ValueError, match="cert_file and key_file"):
        fjord.Publisher(cert_file=cert)
    with pytest.raises(ValueError, match="cert_file and key_file"):
        fjord.Publisher(key_file=key, ca_file=ca)
    with pytest.raises(ValueError, match="credentials or ca_file"):
        fjord.Publisher(credentials=grpc.ssl_channel_credentials(), ca_file=ca)
    with pytest.raises(ValueError, match="credentials or ca_file"):
        fjord.AsyncPublisher(credentials=grpc.ssl_channel_credentials(), cert_file=cert,
                             key_file=key)
    with pytest.raises(ValueError, match="server_name"):
        fjord.Publisher(server_name="gw.example")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(FileNotFoundError, match="ca_file.*missing.pem"):
        fjord.Publisher(ca_file=missing)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not a PEM file"):
        fjord.Publisher(token="t", ca_file=str(not_pem))
    monkeypatch.setenv("FJORD_GATEWAY_CERT_FILE", cert)
    with pytest.raises(ValueError, match=r"\$FJORD_GATEWAY_CERT_FILE and \$FJORD_GATEWAY_KEY"):
        fjord.Publisher()
    # Explicit credentials ignore the file variables; a token composes onto them.
    with fjord.Publisher(credentials=grpc.ssl_channel_credentials(), token="t"):
        pass
