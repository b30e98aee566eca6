"""Test-only stand-in for the Mailpit image: SMTP on :1025 (aiosmtpd) and the part of Mailpit's
HTTP API on :8025 that `make stack-test` reads (GET /readyz, /api/v1/messages,
/api/v1/message/ID/raw), configured from Mailpit's documented environment:
MP_SMTP_AUTH_ACCEPT_ANY=true accepts any login (AUTH PLAIN/LOGIN), MP_SMTP_AUTH_ALLOW_INSECURE=true
offers it without TLS. Each message records whether its sender logged in (`Authenticated`).

    python mailcatcher.py           # serve
    python mailcatcher.py readyz    # health check: exit 0 when the HTTP side answers
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MESSAGES: list[dict] = []
LOCK = threading.Lock()


class Collect:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with LOCK:
            MESSAGES.append(
                {
                    "ID": uuid.uuid4().hex,
                    "Subject": str(msg["Subject"] or ""),
                    "To": list(envelope.rcpt_tos),
                    "From": envelope.mail_from,
                    "Authenticated": bool(session.authenticated),
                    "raw": envelope.content,
                }
            )
        return "250 OK"


class Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/readyz":
            return self._send(200, b"ok", "text/plain")
        if self.path.startswith("/api/v1/messages"):
            with LOCK:
                items = [{k: v for k, v in m.items() if k != "raw"} for m in MESSAGES]
            body = json.dumps({"total": len(items), "messages": items[::-1]}).encode()
            return self._send(200, body, "application/json")
        parts = self.path.strip("/").split("/")
        if len(parts) == 5 and parts[:3] == ["api", "v1", "message"] and parts[4] == "raw":
            with LOCK:
                found = [m for m in MESSAGES if m["ID"] == parts[3]]
            if found:
                return self._send(200, found[0]["raw"], "message/rfc822")
        self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:
        pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["readyz"]:
        urllib.request.urlopen("http://127.0.0.1:8025/readyz", timeout=5)
        return 0
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    # PID 1 in the container: SIGTERM has no default action there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    accept_any = os.environ.get("MP_SMTP_AUTH_ACCEPT_ANY", "").lower() == "true"
    insecure = os.environ.get("MP_SMTP_AUTH_ALLOW_INSECURE", "").lower() == "true"
    auth = {}
    if accept_any:
        auth = {
            "authenticator": lambda *_: AuthResult(success=True),
            "auth_require_tls": not insecure,
        }
    smtp = Controller(Collect(), hostname="0.0.0.0", port=1025, **auth)
    smtp.start()
    http = ThreadingHTTPServer(("0.0.0.0", 8025), Api)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print("mailcatcher: SMTP :1025, HTTP :8025", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
