"""An HTTP proxy on loopback in front of the test S3 server that fails requests on purpose.

Every S3 client in the tests (the driver, Ray workers, pyarrow through s3fs)
talks to the proxy, so faults reach the code exactly as a flaky object store
would deliver them:

* ``slowdown``: ``503 SlowDown`` (S3's "reduce your request rate");
* ``reset``: the connection is closed before any response (a TCP reset);
* ``truncate``: the headers promise the whole body, half of it arrives, then the connection closes;
* ``denied``: ``403 AccessDenied`` (a permission that will not change on retry);
* ``missing``: ``404 NoSuchKey`` (an object deleted after it was listed).

Rules pick requests by method and key (a regular expression on the path) and
fire with a probability, from a seeded random generator. With no rules the
proxy passes everything through unchanged.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERROR_BODY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
              '<RequestId>faulty-proxy</RequestId></Error>')
ERRORS = {"slowdown": (503, "SlowDown", "Please reduce your request rate."),
          "denied": (403, "AccessDenied", "Access Denied"),
          "missing": (404, "NoSuchKey", "The specified key does not exist.")}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Rule:
    fault: str                    # slowdown | reset | truncate | denied | missing
    probability: float = 1.0
    methods: tuple[str, ...] = ("GET", "PUT", "POST", "HEAD", "DELETE")
    path: str = ""                # regular expression searched in the request path (bucket/key?query)


class FaultyS3Proxy:
    def __init__(self, upstream: str, seed: int = 0):
        self.upstream = upstream.split("://", 1)[1]
        self.rules: list[Rule] = []
        self.injected: Counter = Counter()   # fault -> times it fired
        self.requests = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultyS3Proxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def set(self, *rules: Rule) -> None:
        with self._lock:
            self.rules = list(rules)
            self.injected = Counter()
            self.requests = 0

    def clear(self) -> None:
        self.set()

    def pick(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests += 1
            for rule in self.rules:
                if method in rule.methods and re.search(rule.path, path) and self._random.random() < rule.probability:
                    self.injected[rule.fault] += 1
                    return rule.fault
        return None


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultyS3Proxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.proxy.pick(self.command, self.path)
        if fault == "reset":
            self._reset()
            return
        if fault in ERRORS:
            status, code, message = ERRORS[fault]
            self._reply(status, {"Content-Type": "application/xml"},
                        ERROR_BODY.format(code=code, message=message).encode())
            return
        status, headers, payload = self._forward(body)
        if fault == "truncate" and self.command != "HEAD" and len(payload) > 1:
            self._reply(status, headers, payload[: len(payload) // 2], promised=len(payload))
            self._reset()
            return
        self._reply(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.proxy.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], payload
        finally:
            conn.close()

    def _reply(self, status: int, headers, payload: bytes, promised: int | None = None) -> None:
        self.send_response_only(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for k, v in items:
            if k.lower() != "content-length" or self.command == "HEAD":
                self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(promised if promised is not None else len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        else:
            self.end_headers()
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with a TCP reset (RST, not FIN), as a dropped connection looks to the client."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()
