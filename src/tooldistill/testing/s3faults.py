"""An HTTP proxy in front of an S3 server (moto, MinIO, ...) that injects the faults S3 clients meet.

Point ``AWS_ENDPOINT_URL`` at ``FaultProxy.endpoint`` and every request goes through it on
127.0.0.1.  Most are forwarded unchanged to the upstream server; some are answered with a fault:

- ``slowdown``: ``503 Service Unavailable`` with S3's ``<Code>SlowDown</Code>`` error body
  (what S3 answers when a prefix is throttled),
- ``internal``: ``500 Internal Server Error`` with ``<Code>InternalError</Code>``,
- ``drop``: the request is read in full, then the connection is closed without a response; the
  upstream server never sees it,
- ``lost_response``: the request is forwarded (so it takes effect upstream), then the connection
  is closed before the answer reaches the client: a retry repeats a request that already succeeded.

Which requests fail is decided in two ways, checked in this order:

1. **Rules** (``FaultRule``): deterministic, e.g. every ``PUT`` of a key ending in
   ``manifest.json``, or every request after the first 40.  The first rule that matches decides.
2. **A random share** (``rate``) of the remaining requests, from a seeded ``random.Random``, with
   the kind drawn from ``kinds`` (weights).

``stats()`` counts requests seen, requests forwarded and faults injected per kind, so a test can
check that faults really happened (and that the client did not bypass the proxy).  The proxy
keeps no state of its own beyond those counts: the upstream server holds the data.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

FAULT_KINDS = ("slowdown", "internal", "drop", "lost_response")

#: Headers that describe one hop of a connection, not the message: never forwarded as they are.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
}

_ERRORS = {
    "slowdown": (503, "Service Unavailable", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
}


@dataclass(frozen=True)
class FaultRule:
    """Fail matching requests with ``kind``.

    A request matches when its method is ``method`` (any when None) and its object key ends with
    ``key_suffix`` (any when None); the first ``after`` matching requests pass, then up to
    ``times`` of them fail (all of them when None).
    """

    kind: str
    method: str | None = None
    key_suffix: str | None = None
    after: int = 0
    times: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; choose from {', '.join(FAULT_KINDS)}")

    def matches(self, method: str, key: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.key_suffix is None or key.endswith(self.key_suffix)
        )


def split_target(target: str) -> tuple[str, str]:
    """The bucket and object key of a path-style S3 request target (``/bucket/key?query``)."""
    path = unquote(urlsplit(target).path).lstrip("/")
    bucket, _, key = path.partition("/")
    return bucket, key


def error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    """An S3 error document."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 to ``upstream`` (``http://host:port``) that injects faults.

    ``rate`` of the requests not decided by a rule fail, each with a kind drawn from ``kinds``
    (a mapping kind -> weight, or a sequence of kinds of equal weight).  Use it as a context
    manager, or ``start``/``stop``.  ``configure`` changes the rate, kinds and rules while it runs.
    """

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Mapping[str, float] | Sequence[str] = ("slowdown", "internal", "drop"),
        rules: Sequence[FaultRule] = (),
        seed: int = 0,
        port: int = 0,
    ) -> None:
        scheme, _, hostport = upstream.partition("://")
        if scheme != "http" or not hostport:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        host, _, port_text = hostport.rstrip("/").partition(":")
        self.upstream = (host, int(port_text or 80))
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._rate = 0.0
        self._kinds: list[str] = []
        self._weights: list[float] = []
        self._rules: list[FaultRule] = []
        self._rule_seen: Counter[int] = Counter()
        self._rule_fired: Counter[int] = Counter()
        self.configure(rate=rate, kinds=kinds, rules=rules)
        self.requests = 0
        self.forwarded = 0
        self.injected: Counter[str] = Counter()
        self.by_method: Counter[str] = Counter()
        #: (method, key, outcome) of every request, outcome ``forwarded`` or a fault kind
        self.log: list[tuple[str, str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- configuration and counts ---------------------------------------------------------------

    def configure(
        self,
        *,
        rate: float | None = None,
        kinds: Mapping[str, float] | Sequence[str] | None = None,
        rules: Sequence[FaultRule] | None = None,
    ) -> None:
        """Change what is injected from the next request on (what is not given stays)."""
        with self._lock:
            if rate is not None:
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"rate must be within [0, 1], got {rate}")
                self._rate = rate
            if kinds is not None:
                weights = dict(kinds) if isinstance(kinds, Mapping) else dict.fromkeys(kinds, 1.0)
                unknown = sorted(set(weights) - set(FAULT_KINDS))
                if unknown or not weights:
                    raise ValueError(f"fault kinds must be some of {', '.join(FAULT_KINDS)}, got {kinds}")
                self._kinds, self._weights = list(weights), [float(w) for w in weights.values()]
            if rules is not None:
                self._rules = list(rules)
                self._rule_seen.clear()
                self._rule_fired.clear()

    def stats(self) -> dict[str, Any]:
        """Requests seen and forwarded, and faults injected per kind (every kind, zeros included)."""
        with self._lock:
            return {
                "requests": self.requests,
                "forwarded": self.forwarded,
                "injected": {kind: self.injected[kind] for kind in FAULT_KINDS},
                "faults": sum(self.injected.values()),
                "by_method": dict(self.by_method),
            }

    def reset_counts(self) -> None:
        with self._lock:
            self.requests = self.forwarded = 0
            self.injected.clear()
            self.by_method.clear()
            self.log.clear()

    def _decide(self, method: str, key: str) -> str | None:
        """The fault for this request, or None to forward it; counts it."""
        with self._lock:
            self.requests += 1
            self.by_method[method] += 1
            fault: str | None = None
            for index, rule in enumerate(self._rules):
                if not rule.matches(method, key):
                    continue
                self._rule_seen[index] += 1
                if self._rule_seen[index] > rule.after and (
                    rule.times is None or self._rule_fired[index] < rule.times
                ):
                    self._rule_fired[index] += 1
                    fault = rule.kind
                    break
            if fault is None and self._rate and self._random.random() < self._rate:
                fault = self._random.choices(self._kinds, self._weights)[0]
            if fault is not None:
                self.injected[fault] += 1
            if fault in (None, "lost_response"):
                self.forwarded += 1
            self.log.append((method, key, fault or "forwarded"))
            return fault

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the HTTP side ----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(_ProxyHandler):
            pass

        Handler.proxy = proxy
        return Handler


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and ``Expect: 100-continue`` answered
    proxy: FaultProxy

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        """The request body as it came (chunked transfer encoding kept, to be forwarded as is)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                line = self.rfile.readline(65537)
                raw += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the empty line
                        trailer = self.rfile.readline(65537)
                        raw += trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)  # the chunk and its CRLF
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        """Close the connection without an answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        host, port = self.proxy.upstream
        connection = http.client.HTTPConnection(host, port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            out: list[tuple[str, str]] = []
            for name, value in response.getheaders():
                lower = name.lower()
                if lower in _HOP_BY_HOP or lower == "transfer-encoding":
                    continue
                if lower == "content-length" and self.command != "HEAD":
                    continue  # set below from the body as read (HEAD keeps the object's length)
                out.append((name, value))
            if self.command != "HEAD":
                out.append(("Content-Length", str(len(data))))
            return response.status, response.reason, out, data
        finally:
            connection.close()

    def _handle(self) -> None:
        body = self._read_body()
        _, key = split_target(self.path)
        fault = self.proxy._decide(self.command, key)
        if fault == "drop":
            self._drop()
            return
        if fault in _ERRORS:
            status, reason, code, message = _ERRORS[fault]
            request_id = f"{random.getrandbits(64):016X}"
            payload = error_body(code, message, urlsplit(self.path).path, request_id)
            headers = [
                ("Content-Type", "application/xml"),
                ("Content-Length", str(len(payload))),
                ("x-amz-request-id", request_id),
            ]
            self._answer(status, reason, headers, payload)
            return
        try:
            status, reason, headers, data = self._forward(body)
        except OSError:
            self._drop()  # the upstream server is gone: the client sees a dropped connection
            return
        if fault == "lost_response":
            self._drop()
            return
        self._answer(status, reason, headers, data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


@contextlib.contextmanager
def fault_proxy(upstream: str, **options: Any) -> Iterator[FaultProxy]:
    """``with fault_proxy(upstream, rate=0.25, seed=1) as proxy:`` — a started ``FaultProxy``."""
    proxy = FaultProxy(upstream, **options)
    with proxy:
        yield proxy
