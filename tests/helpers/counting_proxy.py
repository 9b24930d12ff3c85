"""A real HTTP reverse proxy that counts the requests passing through it, by method and path.

Put between a client and a tracking server, it says exactly what the client sent over the wire
(every retry, every artifact upload), which no client-side hook can promise. Each request is
forwarded whole to the upstream server on a fresh connection and its answer returned whole, so
it is slow for big files but changes nothing a client or server sees except the address.

    with CountingProxy("http://127.0.0.1:5000") as proxy:
        ...  # clients use proxy.uri
        proxy.counts  # Counter({("POST", "/api/2.0/mlflow/runs/log-batch"): 12, ...})
"""

from __future__ import annotations

import collections
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# headers about one connection, not the message: never forwarded (RFC 9110, 7.6.1)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


class CountingProxy:
    """Forwards to `upstream` (http://HOST:PORT) from a free loopback port; `counts` tallies
    (method, path without the query) of every request received."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port or 80
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(self))
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, path: str) -> None:
        with self.lock:
            self.counts[method, urlsplit(path).path] += 1


def handler_for(proxy: CountingProxy) -> type[BaseHTTPRequestHandler]:
    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client's requests.Session expects

        def forward(self) -> None:
            proxy.count(self.command, self.path)
            body = self.read_body()
            headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=120)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                content = answer.read()
            finally:
                upstream.close()
            self.send_response_only(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(content)

        def read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

        def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
            pass  # a line per request on stderr would bury the test's output

    return Forward
