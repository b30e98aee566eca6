"""The weekly report by email: the message, the SMTP parameters, sending, and the link to the
archived report.

The message is made from the archived report only (`ml.report.archive.read_archive`): HTML with the
charts (PNG) and the error analysis's photo thumbnails (JPEG) as inline `cid:` parts, a plain-text
alternative, and a fresh time-limited link to the archived HTML when the lake is on S3 (SigV4
presigned URLs last at most 7 days). Sending uses smtplib and raises on any SMTP error, for the
caller (Airflow) to retry. Airflow passes its `smtp_default` connection in as `SmtpParams`; `ml`
never imports Airflow.
"""

from __future__ import annotations

import logging
import posixpath
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

from ml.config import addresses
from ml.report.archive import ArchivedReport, report_dir, report_uri
from ml.report.render import num, render_html, render_text
from ml.weeks import Week

log = logging.getLogger(__name__)

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs last at most 7 days


@dataclass(frozen=True)
class SmtpParams:
    host: str = "127.0.0.1"
    port: int = 25
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False  # SMTP over TLS from the first byte (port 465)
    starttls: bool = False  # plain connection upgraded with STARTTLS (port 587)
    timeout: float = 30.0


def report_link(
    lake: Any, week: Week, expiry_s: int, public_endpoint: str | None = None
) -> dict[str, Any]:
    """A time-limited https link to the archived `report.html` on S3, signed for
    `public_endpoint` (the address mail readers reach; default the lake's endpoint); for a local
    lake, its file:// URI (readable only on that machine, and the email says so)."""
    uri = report_uri(lake, week) + "/report.html"
    if not lake.is_s3:
        return {
            "url": uri,
            "text": "a local lake: this path opens only on the machine that holds it",
            "expires_at": None,
        }
    import boto3

    bucket, _, key = posixpath.join(report_dir(lake, week), "report.html").partition("/")
    expiry = max(60, min(int(expiry_s), MAX_PRESIGN_S))
    endpoint = public_endpoint or lake.s3_endpoint or None
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=lake.region)
    url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": key, "ResponseContentType": "text/html; charset=utf-8"},
        ExpiresIn=expiry,
    )
    until = datetime.now(UTC) + timedelta(seconds=expiry)
    return {
        "url": url,
        "text": f"link valid until {until:%Y-%m-%d %H:%M} UTC; {uri}",
        "expires_at": until.isoformat(timespec="seconds"),
    }


def content_id(name: str, week: Week) -> str:
    return f"{name}.{week.label}@postflow"


def subject_of(data: dict[str, Any]) -> str:
    parts = [f"postflow weekly report {data['week']}"]
    e, champ = data["evaluation"], data["champion"]
    if champ and e:
        parts.append(
            f"champion v{champ['version']} accuracy {num(e['accuracy'])}, "
            f"macro-F1 {num(e['macro_f1'])}"
        )
    elif champ:
        parts.append(f"champion v{champ['version']}, not evaluated")
    else:
        parts.append("no champion")
    t = data["quality"]["totals"]
    parts.append(f"{t['ingested']} posts" if t["days_with_data"] else "no data")
    subject = ": ".join(parts[:2]) + "; " + "; ".join(parts[2:])
    if data["flags"]:
        subject = "[drift] " + subject
    return subject


def build_email(
    archived: ArchivedReport,
    sender: str,
    recipients: list[str],
    link: dict[str, Any] | None = None,
) -> EmailMessage:
    """multipart/alternative: text/plain, then multipart/related (text/html + inline PNGs and
    JPEGs, each with the Content-ID its `<img src="cid:...">` names)."""
    week = archived.week
    cids = {n: content_id(n, week) for n in [*archived.images, *archived.thumbnails]}
    html = render_html(archived.data, {n: f"cid:{c}" for n, c in cids.items()}, link, archived.uri)
    msg = EmailMessage()
    msg["Subject"] = subject_of(archived.data)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(idstring=f"report.{week.label}", domain="postflow")
    msg["X-Postflow-Week"] = week.label
    msg.set_content(render_text(archived.data, link))
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[1]
    alt = {c["name"]: c for c in archived.data.get("charts", [])}
    for name, png in archived.images.items():
        html_part.add_related(
            png,
            maintype="image",
            subtype="png",
            cid=f"<{cids[name]}>",
            filename=f"{name}.png",
            disposition="inline",
            headers=[f"Content-Description: {alt.get(name, {}).get('title', name)}"],
        )
    for name, jpeg in archived.thumbnails.items():
        html_part.add_related(
            jpeg,
            maintype="image",
            subtype="jpeg",
            cid=f"<{cids[name]}>",
            filename=f"{name}.jpg",
            disposition="inline",
            headers=[f"Content-Description: photo of {name.replace('_', ' ')}"],
        )
    return msg


def send_email(msg: EmailMessage, smtp: SmtpParams) -> dict[str, Any]:
    """Send with smtplib; raises on any SMTP error (the caller retries)."""
    from_addr = msg["From"]
    to_addrs = addresses(msg["To"])
    cls = smtplib.SMTP_SSL if smtp.ssl else smtplib.SMTP
    kwargs: dict[str, Any] = {"timeout": smtp.timeout}
    if smtp.ssl:
        kwargs["context"] = ssl.create_default_context()
    with cls(smtp.host, smtp.port, **kwargs) as client:
        if smtp.starttls and not smtp.ssl:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if smtp.user:
            client.login(smtp.user, smtp.password or "")
        refused = client.send_message(msg, from_addr=from_addr, to_addrs=to_addrs)
    if refused:
        log.warning("recipients refused by %s:%s: %s", smtp.host, smtp.port, refused)
    return {
        "message_id": msg["Message-ID"],
        "recipients": [a for a in to_addrs if a not in refused],
        "refused": {a: str(v) for a, v in refused.items()},
        "subject": msg["Subject"],
    }
