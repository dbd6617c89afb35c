"""A small HTTP endpoint for monitoring: ``/health``, ``/status`` (JSON) and ``/metrics`` (Prometheus text).

Bound to loopback by default; with a token, ``/status`` and ``/metrics`` need ``Authorization: Bearer <token>``
(``/health`` stays open for load balancers and reveals only which parts are up). Each connection has a
read/write timeout and at most ``threads`` requests are served at once (more are answered 503 at once), so
idle or slow clients cannot pile up threads. Nothing is printed on stdout.
"""

from __future__ import annotations

import hmac
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type, threads: int):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max(1, threads))

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # all threads busy: answer 503 now, do not queue a thread
            try:
                request.settimeout(1.0)
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a broken client connection is not worth a traceback on stdout


class StatusServer:
    """``/health`` -> ``health_fn()`` (200 when ok, else 503); ``/status`` -> ``status_fn()``; ``/metrics`` -> ``metrics_fn()``."""

    def __init__(self, host: str, port: int, status_fn: Callable[[], dict[str, Any]], health_fn: Callable[[], dict[str, Any]] | None = None,
                 metrics_fn: Callable[[], str] | None = None, token: str | None = None, threads: int = 8, timeout_s: float = 10.0):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = timeout_s  # socket timeout: an idle client is dropped

            def _authorised(self) -> bool:
                if not outer.token:
                    return True
                given = self.headers.get("Authorization", "")
                return hmac.compare_digest(given.encode(), f"Bearer {outer.token}".encode())

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                path = self.path.split("?")[0].rstrip("/")
                ctype = "application/json"
                if path == "/health":
                    body, code = outer.call(outer.health_fn)
                    code = 200 if code == 200 and body.get("status") == "ok" else 503
                elif path in ("/status", "/metrics") and not self._authorised():
                    body, code = {"error": "unauthorised: send 'Authorization: Bearer <token>'"}, 401
                elif path == "/status":
                    body, code = outer.call(outer.status_fn)
                elif path == "/metrics" and outer.metrics_fn is not None:
                    body, code = outer.call(outer.metrics_fn)
                    ctype = "text/plain; version=0.0.4" if code == 200 else ctype
                else:
                    body, code = {"error": "not found", "paths": ["/health", "/status", "/metrics"]}, 404
                data = body.encode() if isinstance(body, str) else json.dumps(body, default=str).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (OSError, socket.timeout):
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the server has its own JSON log
                pass

        self.status_fn = status_fn
        self.health_fn = health_fn or (lambda: {"status": "ok"})
        self.metrics_fn = metrics_fn
        self.token = token
        self.httpd = _BoundedServer((host, port), Handler, threads)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="nmkit-status", daemon=True)

    @staticmethod
    def call(fn: Callable[[], Any]) -> tuple[Any, int]:
        try:
            return fn(), 200
        except Exception as exc:  # the endpoint must answer even when the DB is busy
            return {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:300]}, 503

    def start(self) -> int:
        self.thread.start()
        return self.port

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
