"""A small HTTP status endpoint: ``/health`` and ``/status`` (JSON) served from a background thread."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


class StatusServer:
    """``/health`` -> {"status": "ok"}; ``/status`` -> the dictionary ``status_fn()`` returns."""

    def __init__(self, host: str, port: int, status_fn: Callable[[], dict[str, Any]]):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") == "/health":
                    body, code = {"status": "ok"}, 200
                elif self.path.rstrip("/") == "/status":
                    try:
                        body, code = outer.status_fn(), 200
                    except Exception as exc:  # the endpoint must answer even when the DB is busy
                        body, code = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}, 503
                else:
                    body, code = {"error": "not found", "paths": ["/health", "/status"]}, 404
                data = json.dumps(body, default=str).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the server has its own JSON log
                pass

        self.status_fn = status_fn
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="nmkit-status", daemon=True)

    def start(self) -> int:
        self.thread.start()
        return self.port

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
