"""A throw-away HTTP server on 127.0.0.1 for download and fetch tests (never the internet)."""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator


@contextlib.contextmanager
def serve(app: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """Run ``app(handler)`` for every GET; yield the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            app(self)

        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def reply(h: BaseHTTPRequestHandler, status: int, body: bytes = b"", ctype: str = "application/octet-stream",
          headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(body)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def send_file(h: BaseHTTPRequestHandler, data: bytes, *, ranges: bool = True, cut_at: int | None = None) -> int:
    """Serve ``data`` honouring ``Range: bytes=N-`` (when ``ranges``); with ``cut_at``, announce the
    full length but drop the connection after that many bytes. Returns the bytes sent."""
    start = 0
    m = re.match(r"bytes=(\d+)-$", h.headers.get("Range", "") or "")
    if ranges and m:
        start = int(m.group(1))
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return 0
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        h.send_response(200)
    body = data[start:]
    h.send_header("Content-Length", str(len(body)))
    h.send_header("Accept-Ranges", "bytes")
    h.end_headers()
    if cut_at is not None and cut_at < len(body):
        h.wfile.write(body[:cut_at])
        h.wfile.flush()
        h.close_connection = True
        return cut_at
    h.wfile.write(body)
    return len(body)
