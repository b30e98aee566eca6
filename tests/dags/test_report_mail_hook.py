"""The weekly report goes out through the SMTP provider's hook (postflow_airflow.notify.
send_message), so the `smtp_default` connection's settings apply to it: retries, SSL/TLS."""

from __future__ import annotations

import json
import smtplib
import ssl
from email.message import EmailMessage

import pytest

from tests.conftest import free_port


class FlakyServer:
    """aiosmtpd: answers 451 (try again) to the first `fail` messages, then accepts."""

    def __init__(self, fail: int) -> None:
        self.fail, self.attempts, self.accepted = fail, 0, []

    async def handle_DATA(self, server, session, envelope):
        self.attempts += 1
        if self.attempts <= self.fail:
            return "451 Requested action aborted: try again"
        self.accepted.append(envelope.content)
        return "250 OK"


@pytest.fixture
def flaky(request, monkeypatch):
    from aiosmtpd.controller import Controller

    handler = FlakyServer(request.param["fail"])
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    extra = {"disable_tls": True, "disable_ssl": True, "timeout": 5} | request.param["extra"]
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_DEFAULT", json.dumps(conn))
    yield handler
    controller.stop()


def message() -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = "report", "postflow@example.com", "a@x.org, b@x.org"
    msg["Message-ID"] = "<report.2026-W47@postflow>"
    msg.set_content("text")
    msg.add_alternative("<p>html</p>", subtype="html")
    msg.get_payload()[1].add_related(b"\x89PNG", "image", "png", cid="<c@postflow>")
    return msg


@pytest.mark.parametrize("flaky", [{"fail": 2, "extra": {"retry_limit": 2}}], indirect=True)
def test_the_connections_retry_limit_applies(flaky):
    from postflow_airflow.notify import send_message

    out = send_message(message())
    assert flaky.attempts == 3 and len(flaky.accepted) == 1
    assert out["recipients"] == ["a@x.org", "b@x.org"] and out["refused"] == {}
    assert b"Content-ID: <c@postflow>" in flaky.accepted[0], "the built message, parts intact"


@pytest.mark.parametrize("flaky", [{"fail": 1, "extra": {"retry_limit": 0}}], indirect=True)
def test_no_retry_when_the_connection_says_so(flaky):
    from postflow_airflow.notify import send_message

    with pytest.raises(smtplib.SMTPDataError):
        send_message(message())
    assert flaky.attempts == 1


@pytest.mark.parametrize(
    "flaky", [{"fail": 0, "extra": {"disable_ssl": False, "retry_limit": 0}}], indirect=True
)
def test_the_connections_ssl_setting_applies(flaky):
    """SMTP over TLS asked for, against a plain server: the hook's TLS handshake fails on the
    server's plain-text greeting (WRONG_VERSION_NUMBER: it did connect; a refused connection
    or any other error is not this)."""
    from postflow_airflow.notify import send_message

    with pytest.raises(ssl.SSLError, match=r"\[SSL: WRONG_VERSION_NUMBER\]"):
        send_message(message())
    assert flaky.accepted == []
