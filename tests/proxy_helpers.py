"""A recording HTTP forward proxy: shows which requests a proxy set in the environment
(or in the config) would carry."""

from __future__ import annotations

import http.server
import threading

import httpx


class RecordingProxy:
    """A plain HTTP forward proxy on 127.0.0.1 that records each request line it
    forwards (and whether it carried a Vault token)."""

    def __init__(self) -> None:
        seen = self.seen = []  # type: list[tuple[str, bool]]

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                seen.append((f"{self.command} {self.path}", "X-Vault-Token" in self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                answer = httpx.request(
                    self.command, self.path, headers=headers, content=body, trust_env=False
                )
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_LIST = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
