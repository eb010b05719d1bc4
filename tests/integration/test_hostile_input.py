"""Hostile input at the edges (issue 15), over real sockets and through the real CLI.

- Each web route has its own body limit: SNS envelopes up to 256 KB, the unsubscribe form 16 KB.
- No route redirects: `/u/<token>/` is the same 404 as any unknown path, whatever `Host` says.
- JSON that would crash `json.loads` or the database (5,000-digit numbers, 10,000-deep
  nesting, NaN and 1e400, NUL, lone surrogates) is refused with one line (400 on the web,
  `digest: error: ...` at the CLI), changing nothing and logging no traceback.
- `digest feedback ingest` checks the whole file first and applies it in one transaction:
  a bad line, or one the database refuses, applies nothing and is named `FILE:LINE: reason`.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine, text

from digest.config import Settings
from digest.feedback.apply import ingest
from digest.feedback.ses import FeedbackError
from digest.feedback.sns import canonical_string
from digest.unsubscribe import make_legacy_token
from digest.web.app import create_app

Invoke = Callable[..., Result]

SECRET = "test-secret"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:digest-ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}

ADD_RECIPIENT = text(
    "INSERT INTO recipients (bucket, user_id, email) "
    "VALUES (digest_bucket(:user_id), :user_id, :email)"
)
ADD_RUN = text(
    """
    INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for, status)
    VALUES (digest_bucket(:user_id), :user_id, 'daily', now(), now(), 'sent')
    RETURNING id
    """
)
ADD_DELIVERY = text(
    """
    WITH delivery AS (
        INSERT INTO deliveries (bucket, run_id, user_id, recipient, transport,
                                provider_message_id, attempt, status)
        VALUES (digest_bucket(:user_id), :run_id, :user_id, :email, 'ses', :provider_message_id,
                1, 'sent')
        RETURNING bucket, id, provider_message_id
    ), looked_up AS (  -- as the worker records a delivery (digest.claim.RUN_FINISH_MANY)
        INSERT INTO delivery_provider_ids (provider_message_id, delivery_id, bucket)
        SELECT provider_message_id, id, bucket FROM delivery WHERE provider_message_id IS NOT NULL
    )
    SELECT id FROM delivery
    """
)

DEEP = "[" * 10_000 + "]" * 10_000
NINES = "9" * 5_000


def make_signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    """An RSA key and a self-signed PEM certificate for it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


KEY, CERT_PEM = make_signer()


def sent(engine: Engine, user_id: str, provider_message_id: str) -> int:
    """A recipient with one sent delivery; its id."""
    email = f"{user_id}@example.com"
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"user_id": user_id, "email": email})
        run_id = conn.execute(ADD_RUN, {"user_id": user_id}).scalar_one()
        delivery_id: int = conn.execute(
            ADD_DELIVERY,
            {
                "run_id": run_id,
                "user_id": user_id,
                "email": email,
                "provider_message_id": provider_message_id,
            },
        ).scalar_one()
    return delivery_id


def bounce(message_id: str, email: str, **mail: Any) -> dict[str, Any]:
    """A permanent SES bounce of `email` for the message `message_id`."""
    return {
        "eventType": "Bounce",
        "mail": {"messageId": message_id, "destination": [email], **mail},
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": email, "diagnosticCode": "550 unknown"}],
        },
    }


def signed(message: str, message_id: str = "sns-1") -> dict[str, Any]:
    """An SNS Notification on the allowed topic carrying `message`, signed by the test key."""
    envelope = {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-11-24T12:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
    }
    raw = KEY.sign(canonical_string(envelope), padding.PKCS1v15(), hashes.SHA256())
    return {**envelope, "Signature": base64.b64encode(raw).decode()}


def status(engine: Engine, delivery_id: int) -> str:
    with engine.connect() as conn:
        found: str = conn.execute(
            text("SELECT status FROM deliveries WHERE id = :id"), {"id": delivery_id}
        ).scalar_one()
    return found


def snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    """Everything a request or a command here could change."""
    with engine.connect() as conn:
        rows = [
            *conn.execute(text("SELECT * FROM deliveries ORDER BY id")),
            *conn.execute(text("SELECT * FROM suppressions ORDER BY email")),
            *conn.execute(text("SELECT * FROM recipients ORDER BY user_id")),
            *conn.execute(text("SELECT * FROM bounce_streaks ORDER BY email")),
            *conn.execute(text("SELECT * FROM feedback_events ORDER BY id")),
            *conn.execute(text("SELECT * FROM digest_events ORDER BY id")),
        ]
    return [tuple(row) for row in rows]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines that carry a traceback or say ERROR."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.exc_info or record.levelno >= logging.ERROR
    ]


# ---------------------------------------------------------------------------- web


@dataclass(frozen=True)
class Reply:
    """An HTTP answer as the client saw it; `headers` without Date (it ticks)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: str


@dataclass(frozen=True)
class Site:
    """`create_app` served by uvicorn on a real socket."""

    port: int

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = body.encode() if isinstance(body, str) else body
            conn.request(method, path, body=data, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            kept = tuple((k.lower(), v) for k, v in response.getheaders() if k.lower() != "date")
            return Reply(response.status, kept, raw.decode("utf-8", "replace"))
        finally:
            conn.close()

    def webhook(self, body: bytes | str | dict[str, Any]) -> Reply:
        data = json.dumps(body) if isinstance(body, dict) else body
        return self.request("POST", "/webhooks/ses", data, {"Content-Type": "text/plain"})


@pytest.fixture
def site(engine: Engine) -> Iterator[Site]:
    """The whole web app (`digest serve`'s), its SNS certificate fetch answered locally."""

    def fetch(url: str) -> bytes:
        assert url == CERT_URL
        return CERT_PEM

    settings = Settings(secret_key=SECRET, sns_topics=frozenset({TOPIC}))
    app = create_app(engine, settings, fetch=fetch)
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "server thread died"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield Site(listener.getsockname()[1])
    server.should_exit = True
    thread.join(10)
    listener.close()


def test_each_route_has_its_own_body_limit(engine: Engine, site: Site) -> None:
    """A 200 KB SNS envelope is applied; over 256 KB is a 413; the form stays at 16 KB."""
    delivery_id = sent(engine, "ana", "ses-1")
    headers = [{"name": "X-Padding", "value": "x" * 200_000}]
    big = signed(json.dumps(bounce("ses-1", "ana@example.com", headers=headers)))
    assert len(json.dumps(big)) > 200_000
    assert site.webhook(big).status == 200
    assert status(engine, delivery_id) == "bounced"

    before = snapshot(engine)
    headers = [{"name": "X-Padding", "value": "x" * 300_000}]
    huge = signed(json.dumps(bounce("ses-1", "ana@example.com", headers=headers)), "sns-2")
    assert site.webhook(huge).status == 413
    form = ONE_CLICK + "&pad=" + "x" * 20_000
    token = make_legacy_token(SECRET, "ana")
    assert site.request("POST", f"/u/{token}", form, URLENCODED).status == 413
    assert snapshot(engine) == before


def inner(event: dict[str, Any], extra: str) -> str:
    """`event`'s JSON text with `extra` (raw JSON text) added as a last member."""
    return json.dumps(event)[:-1] + f', "extra": {extra}}}'


HOSTILE_BODIES: dict[str, Callable[[], bytes | str | dict[str, Any]]] = {
    "5,000 nines": lambda: NINES,
    "10,000-deep array": lambda: DEEP,
    "5,000-deep object": lambda: '{"a":' * 5_000 + "1" + "}" * 5_000,
    "NaN": lambda: '{"Type": NaN}',
    "1e400": lambda: '{"Type": "Notification", "n": 1e400}',
    "lone surrogate in the envelope": lambda: {"Type": "Notification", "Message": "\ud800"},
    "NUL in the envelope": lambda: {"Type": "Notification", "Message": "a\x00b"},
    "signed, lone surrogate in mail.messageId": lambda: signed(
        json.dumps(bounce("\ud800", "ana@example.com"))
    ),
    "signed, NUL in mail.messageId": lambda: signed(
        json.dumps(bounce("ses-1\x00", "ana@example.com"))
    ),
    "signed, 5,000-digit number": lambda: signed(inner(bounce("ses-1", "a@x.org"), NINES)),
    "signed, 10,000-deep array": lambda: signed(inner(bounce("ses-1", "a@x.org"), DEEP)),
    "signed, 1e400": lambda: signed(inner(bounce("ses-1", "a@x.org"), "1e400")),
    "signed, NaN": lambda: signed(inner(bounce("ses-1", "a@x.org"), "NaN")),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_webhook_answers_hostile_json_with_a_one_line_400(
    engine: Engine, site: Site, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """Numbers, nesting, NaN, NUL or lone surrogates that would crash: 400, one line, no change."""
    sent(engine, "ana", "ses-1")
    before = snapshot(engine)
    with caplog.at_level(logging.INFO):
        reply = site.webhook(HOSTILE_BODIES[name]())
    assert reply.status == 400, reply.body
    assert reply.body.endswith("\n")
    assert reply.body.count("\n") == 1
    assert snapshot(engine) == before
    assert tracebacks(caplog) == []


def test_trailing_slash_is_the_same_404_as_any_unknown_path(engine: Engine, site: Site) -> None:
    """`/u/<token>/` and other slashed paths never redirect (to any Host): the one 404."""
    sent(engine, "ana", "ses-1")
    before = snapshot(engine)
    token = make_legacy_token(SECRET, "ana")
    evil = {"Host": "evil.example"}
    reference = site.request("GET", "/no/such/path", headers=evil)
    assert reference.status == 404
    replies = {
        "GET /u/token/": site.request("GET", f"/u/{token}/", headers=evil),
        "POST /u/token/": site.request("POST", f"/u/{token}/", ONE_CLICK, {**URLENCODED, **evil}),
        "GET /healthz/": site.request("GET", "/healthz/", headers=evil),
        "POST /webhooks/ses/": site.request("POST", "/webhooks/ses/", "{}", evil),
    }
    for label, reply in replies.items():
        assert reply == reference, label
        assert not any(name == "location" for name, _ in reply.headers), label
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------- CLI

HOSTILE_PAYLOADS = {
    "10,000-deep array": (DEEP, "nested more than"),
    "10,000-deep array in an object": ('{"a": ' + DEEP + "}", "nested more than"),
    "5,000-digit number": ('{"n": ' + NINES + "}", "a number of 5000 characters"),
    "1e400": ('{"n": 1e400}', "out of range"),
    "NaN": ('{"n": NaN}', "NaN"),
    "lone surrogate": ('{"t": "\\ud800"}', "lone surrogate"),
    "NUL": ('{"t": "a\\u0000b"}', "NUL"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PAYLOADS))
def test_events_add_refuses_hostile_payloads_in_one_line(
    engine: Engine, digest_cli: Invoke, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """`events add --payload` with hostile JSON: `digest: error: --payload ...`, nothing stored."""
    payload, reason = HOSTILE_PAYLOADS[name]
    result = digest_cli(
        "events", "add", "--user", "1", "--category", "comment", "--entity-type", "post",
        "--entity-id", "1", "--payload", payload,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("digest: error: --payload"), result.stderr
    assert result.stderr.count("\n") == 1
    assert reason in result.stderr
    assert "unexpected" not in result.stderr
    assert snapshot(engine) == []
    assert tracebacks(caplog) == []


HOSTILE_LINES = {
    "NUL in mail.messageId": (
        json.dumps(bounce("ses-2\x00", "ben@example.com")),
        "mail.messageId contains a NUL character",
    ),
    "lone surrogate in mail.messageId": (
        json.dumps(bounce("\ud800", "ben@example.com")),
        "mail.messageId is not valid Unicode (lone surrogate)",
    ),
    "5,000-digit number": (inner(bounce("ses-2", "ben@example.com"), NINES), "5000 characters"),
    "10,000-deep array": (inner(bounce("ses-2", "ben@example.com"), DEEP), "nested more than"),
    "1e400": (inner(bounce("ses-2", "ben@example.com"), "1e400"), "out of range"),
    "NaN": (inner(bounce("ses-2", "ben@example.com"), "NaN"), "NaN"),
    "over 256 KB": (
        json.dumps(bounce("ses-2", "ben@example.com", pad="x" * 300_000)),
        "over the 256 KB limit",
    ),
    "NUL inside an SNS envelope's Message": (
        json.dumps(signed(json.dumps(bounce("ses-2\x00", "ben@example.com")))),
        "SNS Message: mail.messageId contains a NUL character",
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE_LINES))
def test_feedback_ingest_checks_the_whole_file_before_applying_any(
    engine: Engine,
    digest_cli: Invoke,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A valid line 1 and a hostile line 2: `FILE:2: reason`, exit 1, line 1 not applied."""
    ana = sent(engine, "ana", "ses-1")
    bad, reason = HOSTILE_LINES[name]
    path = tmp_path / "feedback.jsonl"
    path.write_text(json.dumps(bounce("ses-1", "ana@example.com")) + "\n" + bad + "\n")
    before = snapshot(engine)
    result = digest_cli("feedback", "ingest", str(path))
    assert result.exit_code == 1, result.output
    assert f"{path}:2: " in result.stderr
    assert reason in result.stderr
    assert "nothing was applied" in result.stderr
    assert "unexpected" not in result.stderr
    assert snapshot(engine) == before
    assert status(engine, ana) == "sent"
    assert tracebacks(caplog) == []


def test_feedback_ingest_applies_nothing_when_the_database_refuses_a_line(
    engine: Engine, digest_cli: Invoke, tmp_path: Path
) -> None:
    """A line the database refuses rolls back the lines before it and is named FILE:LINE."""
    ana = sent(engine, "ana", "ses-1")
    with engine.begin() as conn:  # a real refusal by PostgreSQL, for a value we accept
        conn.execute(
            text(
                "ALTER TABLE feedback_events ADD CONSTRAINT test_refuse "
                "CHECK (provider_message_id <> 'refused-by-the-database')"
            )
        )
    lines = [
        json.dumps(bounce("ses-1", "ana@example.com")),
        json.dumps(bounce("refused-by-the-database", "ben@example.com")),
    ]
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join(lines) + "\n")
    before = snapshot(engine)
    result = digest_cli("feedback", "ingest", str(path))
    assert result.exit_code == 1, result.output
    assert f"digest: error: {path}:2: the database refused it" in result.stderr
    assert "nothing was applied" in result.stderr
    assert snapshot(engine) == before
    assert status(engine, ana) == "sent"


@pytest.mark.parametrize(
    ("mail", "reason"),
    [
        ({"messageId": "ses-1\x00"}, "mail.messageId contains a NUL character"),
        ({"messageId": "\ud800"}, "mail.messageId is not valid Unicode"),
        ({"n": float("nan")}, "mail.n is nan"),
        ({"n": 10**5000}, "mail.n is a number of more than 100 digits"),
    ],
    ids=["NUL", "lone surrogate", "NaN", "huge integer"],
)
def test_ingest_from_python_refuses_what_the_database_cannot_store(
    engine: Engine, mail: dict[str, Any], reason: str
) -> None:
    """`ingest` handed such values by Python raises FeedbackError naming them; nothing changes."""
    sent(engine, "ana", "ses-1")
    before = snapshot(engine)
    event = bounce("ses-1", "ana@example.com")
    event["mail"].update(mail)
    with pytest.raises(FeedbackError, match=reason):
        ingest(engine, event)
    assert snapshot(engine) == before
