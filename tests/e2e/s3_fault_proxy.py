"""A fault-injecting HTTP reverse proxy in front of an S3-compatible server.

This module owns :class:`S3FaultProxy`: a threaded HTTP/1.1 server inside the
test process that forwards every request (any method, path and query, body,
and all headers -- ``Host`` and ``Authorization`` included, so SigV4
signatures made for the proxy's address still verify upstream) to one
upstream server such as ``moto_server``, and that can, on command:

* answer a random fraction of requests with an S3 XML error
  (:meth:`~S3FaultProxy.fail_fraction`), before or after forwarding them;
* delay a random fraction of responses (:meth:`~S3FaultProxy.delay_fraction`);
* be unreachable for a while (:meth:`~S3FaultProxy.down`): the listening
  socket is closed (new connections are refused) and open connections are
  reset; then it listens again on the same port.

All controls are thread-safe; :meth:`~S3FaultProxy.stats` counts requests and
injected faults.  Bodies are buffered whole (fine for test-sized objects).
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import urlsplit

#: Headers that describe one hop, not the message (RFC 9110 section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade"}
#: How long a request may wait for the upstream server.
UPSTREAM_TIMEOUT_S = 60.0

ERROR_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


@dataclass(frozen=True)
class _Rule:
    kind: str  # "fail" or "delay"
    fraction: float
    methods: Optional[frozenset[str]]
    status: int = 0
    code: str = ""
    after_upstream: bool = False
    seconds: float = 0.0

    def applies(self, method: str, rng: random.Random) -> bool:
        return (self.methods is None or method in self.methods) and rng.random() < self.fraction


def s3_error_body(code: str, message: str) -> bytes:
    """The XML body S3 sends with an error status."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    ).encode()


class S3FaultProxy:
    """Reverse proxy from ``127.0.0.1:<port>`` to ``upstream`` (``http://host:port``).

    Use as a context manager or call :meth:`start` / :meth:`close`.  With no
    faults configured it forwards everything unchanged.
    """

    def __init__(self, upstream: str, port: int = 0, seed: Optional[int] = None) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname, f"need an http:// upstream, got {upstream!r}"
        self.upstream = (parts.hostname, parts.port or 80)
        self.port = port
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._rules: list[_Rule] = []
        self._stats: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._server: Optional[ThreadingHTTPServer] = None
        self._serving: Optional[threading.Thread] = None
        self._down_until = 0.0
        self._up_timer: Optional[threading.Timer] = None
        self._closed = False

    # ------------------------------------------------------------------ info

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._server is None

    def stats(self) -> dict[str, int]:
        """Counters: ``requests``, ``requests.<METHOD>``, ``injected.<status>.<code>``
        (errors sent), ``delayed``, ``reset`` (connections reset by :meth:`down`),
        ``refused_while_down`` (requests on connections that were already open),
        ``upstream_errors`` (answered 502), ``handler_errors`` (mostly clients
        that hung up before their response was written, e.g. after a timeout)."""
        with self._lock:
            return dict(self._stats)

    def injected(self) -> int:
        """How many error responses were injected so far."""
        return sum(n for k, n in self.stats().items() if k.startswith("injected."))

    # -------------------------------------------------------------- controls

    def fail_fraction(self, p: float, status: int = 503, code: str = "SlowDown", *,
                      methods: Optional[set[str]] = None, after_upstream: bool = False) -> None:
        """Answer a fraction ``p`` of requests with ``status`` and an S3 error
        body naming ``code``.  With ``after_upstream`` the request is
        forwarded first (it takes effect, the client just does not learn it).
        Rules add up: each is tried in the order given, the first that fires
        wins.  ``methods`` restricts the rule (e.g. ``{"PUT"}``)."""
        self._add(_Rule("fail", p, _methods(methods), status=status, code=code,
                        after_upstream=after_upstream))

    def delay_fraction(self, p: float, seconds: float, *,
                       methods: Optional[set[str]] = None) -> None:
        """Hold the response to a fraction ``p`` of requests for ``seconds``
        (the request itself reaches the upstream server at once)."""
        self._add(_Rule("delay", p, _methods(methods), seconds=seconds))

    def clear(self) -> None:
        """Remove every fail and delay rule."""
        with self._lock:
            self._rules.clear()

    def down(self, seconds: float) -> None:
        """Become unreachable now and for ``seconds``, then listen again on the
        same port.  Returns at once (the way back runs on a timer)."""
        with self._lock:
            server, self._server = self._server, None
            self._down_until = time.monotonic() + seconds
            if self._up_timer is not None:
                self._up_timer.cancel()
            self._up_timer = threading.Timer(seconds, self.up)
            self._up_timer.daemon = True
            connections = list(self._connections)
            self._stats["down"] += 1
            self._stats["reset"] += len(connections)
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in connections:
            self._reset(conn)
        self._up_timer.start()

    def up(self) -> None:
        """Listen again (no-op if listening or closed)."""
        with self._lock:
            if self._server is not None or self._closed:
                return
            if self._up_timer is not None:
                self._up_timer.cancel()
                self._up_timer = None
        self._listen()

    # ------------------------------------------------------------- lifecycle

    def start(self) -> "S3FaultProxy":
        self._listen()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
            if self._up_timer is not None:
                self._up_timer.cancel()
            connections = list(self._connections)
        if server is not None:
            server.shutdown()
            server.server_close()
        for conn in connections:
            self._reset(conn)

    def __enter__(self) -> "S3FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- internals

    def _add(self, rule: _Rule) -> None:
        assert 0.0 <= rule.fraction <= 1.0, f"fraction {rule.fraction} not in [0, 1]"
        with self._lock:
            self._rules.append(rule)

    def _listen(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                server = _Server(("127.0.0.1", self.port), _Handler)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        server.proxy = self
        self.port = server.server_address[1]
        with self._lock:
            if self._closed:
                server.server_close()
                return
            self._server = server
        self._serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                         name=f"s3-fault-proxy:{self.port}", daemon=True)
        self._serving.start()

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Make the peer see a connection reset (RST on close) and wake up the
        thread serving it."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _count(self, *keys: str) -> None:
        with self._lock:
            self._stats.update(keys)

    def _decide(self, method: str) -> tuple[Optional[_Rule], float]:
        """``(fail rule or None, delay seconds)`` for one request; counts it."""
        with self._lock:
            self._stats.update(["requests", f"requests.{method}"])
            fail = next((r for r in self._rules if r.kind == "fail" and r.applies(method, self._rng)), None)
            delay = next((r.seconds for r in self._rules
                          if r.kind == "delay" and r.applies(method, self._rng)), 0.0)
        return fail, delay

    def _track(self, conn: socket.socket, add: bool) -> bool:
        """Register (``add``) or forget a client connection.  Registering fails
        while the proxy is down."""
        with self._lock:
            if not add:
                self._connections.discard(conn)
                return True
            if self._server is None:
                return False
            self._connections.add(conn)
            return True


def _methods(methods: Optional[set[str]]) -> Optional[frozenset[str]]:
    return None if methods is None else frozenset(m.upper() for m in methods)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: S3FaultProxy

    def handle_error(self, request, client_address) -> None:
        # Clients going away (timeouts, resets by down()) are part of the tests.
        self.proxy._count("handler_errors")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are written separately: without TCP_NODELAY, Nagle's
    # algorithm and the client's delayed ACKs add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        if not self.server.proxy._track(self.connection, True):
            S3FaultProxy._reset(self.connection)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args) -> None:
        pass  # quiet; see S3FaultProxy.stats()

    def do_GET(self) -> None:
        self._proxy()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _proxy(self) -> None:
        proxy = self.server.proxy
        body, chunked = self._read_body()
        if proxy.is_down:
            proxy._count("refused_while_down")
            self.close_connection = True
            S3FaultProxy._reset(self.connection)
            return
        fail, delay = proxy._decide(self.command)
        if fail is None or fail.after_upstream:
            try:
                status, headers, data = self._forward(body, chunked)
            except (OSError, http.client.HTTPException) as e:
                proxy._count("upstream_errors")
                status, headers, data = 502, [("Content-Type", "text/plain")], f"upstream: {e}".encode()
        if delay:
            proxy._count("delayed")
            time.sleep(delay)
        if fail is not None:
            proxy._count(f"injected.{fail.status}.{fail.code}")
            message = ERROR_MESSAGES.get(fail.code, "Injected fault.") + " (injected by s3_fault_proxy)"
            status, headers = fail.status, [("Content-Type", "application/xml")]
            data = s3_error_body(fail.code, message)
        self._respond(status, headers, data)

    def _read_body(self) -> tuple[bytes, bool]:
        """The request body, de-chunked; and whether it came chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts), True
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return (self.rfile.read(length) if length else b""), False

    def _forward(self, body: bytes, chunked: bool) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request upstream with the client's headers unchanged (except
        ``Expect``: the 100-continue handshake was already done with the client)."""
        host, port = self.server.proxy.upstream
        conn = http.client.HTTPConnection(host, port, timeout=UPSTREAM_TIMEOUT_S)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() != "expect":
                    conn.putheader(name, value)
            if chunked:
                conn.endheaders(body, encode_chunked=True)
            else:
                conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _respond(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response_only(status)
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or (lower == "content-length" and self.command != "HEAD"):
                continue
            self.send_header(name, value)
        if self.command != "HEAD" and status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        elif self.command == "HEAD" and not any(n.lower() == "content-length" for n, _ in headers):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self.wfile.flush()
