"""Test-only stand-in for the versitygw image (`make stack-test`): moto's S3 server, configured
from the environment the real image documents, so compose.override.yaml changes only `image`.

VGW_PORT (":7070") is where it listens and VGW_HEALTH the path that answers 200. ROOT_ACCESS_KEY
/ ROOT_SECRET_KEY are not checked: moto accepts any key (what stays untested: the README says).
The positional arguments and VGW_BACKEND/VGW_BACKEND_ARG of the real image are accepted and
ignored (moto keeps its buckets in memory).
"""

from __future__ import annotations

import os
import signal
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


def with_health(app, path: str):
    def wsgi(environ, start_response):
        if path and environ.get("PATH_INFO") == path:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"OK"]
        return app(environ, start_response)

    return wsgi


def main() -> int:
    # PID 1 in the container: SIGTERM has no default action there
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, _, port = os.environ.get("VGW_PORT", ":7070").rpartition(":")
    app = with_health(DomainDispatcherApplication(create_backend_app), os.environ.get("VGW_HEALTH"))
    server = make_server(host or "0.0.0.0", int(port), app, threaded=True)
    print(f"s3 stand-in (moto): {host or '0.0.0.0'}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
