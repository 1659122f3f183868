"""The bench CI issuer's JWKS endpoint, in its own process.

    python -m bench.jwks --state DIR --port P

Serves ``/.well-known/jwks.json`` (and ``/jwks``) for the key kept in
``DIR`` and counts fetches: ``GET /_fetches`` -> ``{"fetches": N}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import issuer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jwks")
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    body = json.dumps(issuer(args.state).jwks()).encode()
    lock = threading.Lock()
    fetches = [0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/.well-known/jwks.json", "/jwks"):
                with lock:
                    fetches[0] += 1
                self._send(200, body)
            elif path == "/_fetches":
                with lock:
                    self._send(200, json.dumps({"fetches": fetches[0]}).encode())
            else:
                self._send(404, b'{"error":"not found"}')

        def _send(self, status: int, payload: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while not done.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
