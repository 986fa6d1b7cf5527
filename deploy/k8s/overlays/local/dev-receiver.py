"""A stand-in for the CRM and the alert webhook in the compose stack
(deploy/compose) and the local Kubernetes overlay (deploy/k8s/overlays/local):
accepts every POST, logs its path and size, answers 204; GET answers 200 (the
health check). Runs in the hookstream image: ``python dev-receiver.py`` (:8099)."""

import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        print(f"POST {self.path} {length} bytes", file=sys.stderr, flush=True)
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:  # health check
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    http.server.ThreadingHTTPServer(("0.0.0.0", 8099), Handler).serve_forever()
