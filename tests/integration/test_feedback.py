"""SES feedback on a real database: events, replays, orphans, suppressions, CLI and webhook."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
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
from starlette.applications import Starlette

from digest import suppressions
from digest.buckets import BUCKETS, bucket_of
from digest.channels.email.file import FileTransport
from digest.channels.email.mime import make_message_id
from digest.config import Settings
from digest.feedback.apply import ingest
from digest.feedback.sns import canonical_string
from digest.feedback.webhook import ses_webhook_route
from digest.scheduler import schedule_once
from digest.worker import Worker

Invoke = Callable[..., Result]

TOPIC = "arn:aws:sns:eu-west-1:123456789012:digest-ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
SUBSCRIBE_URL = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t"
SHAPES = ("eventType", "notificationType")

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


def sent(engine: Engine, user_id: str, provider_message_id: str | None) -> tuple[int, int]:
    """A recipient with one sent delivery; (run id, delivery id)."""
    email = f"{user_id}@example.com"
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"user_id": user_id, "email": email})
        run_id = conn.execute(ADD_RUN, {"user_id": user_id}).scalar_one()
        delivery_id = conn.execute(
            ADD_DELIVERY,
            {
                "run_id": run_id,
                "user_id": user_id,
                "email": email,
                "provider_message_id": provider_message_id,
            },
        ).scalar_one()
    return run_id, delivery_id


def ses_event(
    kind: str,
    message_id: str,
    email: str,
    *,
    shape: str = "eventType",
    run_id: int | None = None,
    bounce_type: str = "Permanent",
) -> dict[str, Any]:
    """An SES event of `kind` about `email`, in configuration-set or notification shape."""
    mail: dict[str, Any] = {
        "messageId": message_id,
        "timestamp": "2026-11-24T12:00:00.000Z",
        "destination": [email],
    }
    if run_id is not None:
        mail["tags"] = {"run_id": [str(run_id)], "attempt": ["1"]}
    details: dict[str, Any] = {
        "Bounce": {
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": email,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
            }
        },
        "Complaint": {
            "complaint": {
                "complainedRecipients": [{"emailAddress": email}],
                "complaintFeedbackType": "abuse",
            }
        },
        "Delivery": {"delivery": {"recipients": [email], "smtpResponse": "250 2.0.0 OK"}},
        "Reject": {"reject": {"reason": "Bad content"}},
        "DeliveryDelay": {
            "deliveryDelay": {
                "delayType": "MailboxFull",
                "delayedRecipients": [{"emailAddress": email}],
            }
        },
        "Send": {"send": {}},
    }
    return {shape: kind, "mail": mail, **details[kind]}


def envelope(event: dict[str, Any], message_id: str) -> dict[str, Any]:
    """`event` as SNS delivers it: a Notification whose Message is the event's JSON text."""
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(event),
        "Timestamp": "2026-11-24T12:00:00.000Z",
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
    }


def status(engine: Engine, delivery_id: int) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, reason FROM deliveries WHERE id = :id"), {"id": delivery_id}
        ).one()
    return row[0], row[1]


def unsubscribed(engine: Engine, user_id: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text("SELECT unsubscribed_at IS NOT NULL FROM recipients WHERE user_id = :u"),
                {"u": user_id},
            ).scalar_one()
        )


def feedback_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT * FROM feedback_events ORDER BY id")).all())


def snapshot(engine: Engine) -> list[tuple[Any, ...]]:
    """Everything feedback can change."""
    with engine.connect() as conn:
        rows = [
            *conn.execute(text("SELECT * FROM deliveries ORDER BY id")),
            *conn.execute(text("SELECT * FROM suppressions ORDER BY email")),
            *conn.execute(text("SELECT * FROM recipients ORDER BY user_id")),
            *conn.execute(text("SELECT * FROM bounce_streaks ORDER BY email")),
            *conn.execute(text("SELECT * FROM feedback_events ORDER BY id")),
        ]
    return [tuple(row) for row in rows]


# ---------------------------------------------------------------------------- event types

EXPECTED = {
    "Delivery": "delivered",
    "Bounce": "bounced",
    "Complaint": "complained",
    "Reject": "rejected",
    "DeliveryDelay": "deferred",
    "Send": "sent",
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_event_type_in_both_shapes_sets_the_delivery_status(
    engine: Engine, kind: str, shape: str
) -> None:
    """Every SES event type, as eventType or notificationType, moves its delivery as listed."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    result = ingest(engine, ses_event(kind, "ses-1", "ana@example.com", shape=shape))
    assert (result.event_type, result.delivery_id, result.orphan) == (kind, delivery_id, False)
    assert status(engine, delivery_id)[0] == EXPECTED[kind]
    suppressed = suppressions.is_suppressed(engine, "ana@example.com")
    assert suppressed is (kind in ("Bounce", "Complaint"))
    assert unsubscribed(engine, "ana") is (kind == "Complaint")
    [row] = feedback_rows(engine)
    assert (row.event_type, row.provider_message_id, row.orphan) == (kind, "ses-1", False)
    assert row.recipient == "ana@example.com"


def test_permanent_bounce_records_the_diagnostic_as_reason(engine: Engine) -> None:
    """A hard bounce keeps the diagnostic code on the delivery and in the suppression."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    result = ingest(engine, ses_event("Bounce", "ses-1", "Ana@Example.com"))
    assert result.suppressed == ("ana@example.com",)
    assert status(engine, delivery_id) == ("bounced", "smtp; 550 5.1.1 user unknown")
    found = suppressions.get(engine, "ana@example.com")
    assert found is not None
    assert (found.source, found.reason) == (
        "ses",
        "ses bounce Permanent: smtp; 550 5.1.1 user unknown",
    )
    assert feedback_rows(engine)[0].bounce_type == "Permanent"


def test_redacted_complaint_suppresses_the_matched_recipient(engine: Engine) -> None:
    """An ISP-redacted complaint (no recipients) still suppresses and unsubscribes the user."""
    sent(engine, "ana", "ses-1")
    event = ses_event("Complaint", "ses-1", "ana@example.com")
    event["complaint"]["complainedRecipients"] = []
    result = ingest(engine, event)
    assert result.suppressed == ("ana@example.com",)
    assert result.unsubscribed == "ana"


def test_status_never_moves_backwards(engine: Engine) -> None:
    """A Delivery arriving after a Complaint leaves the delivery `complained`."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    ingest(engine, ses_event("Complaint", "ses-1", "ana@example.com"))
    result = ingest(engine, ses_event("Delivery", "ses-1", "ana@example.com"))
    assert result.status is None
    assert status(engine, delivery_id)[0] == "complained"


# ---------------------------------------------------------------------------- matching


def test_run_tag_matches_a_delivery_without_provider_id(engine: Engine) -> None:
    """An unknown provider id falls back to the run_id tag SES echoes back."""
    run_id, delivery_id = sent(engine, "ana", None)
    result = ingest(engine, ses_event("Delivery", "ses-x", "ana@example.com", run_id=run_id))
    assert (result.delivery_id, result.orphan) == (delivery_id, False)
    assert status(engine, delivery_id)[0] == "delivered"
    assert feedback_rows(engine)[0].run_id == run_id


def test_bucket_and_run_tags_find_the_delivery_on_its_shard(engine: Engine) -> None:
    """With our `bucket` tag beside `run_id`, the fallback by run looks in that bucket only
    (on Citus, the one node that holds it): the right bucket matches, another does not."""
    run_id, delivery_id = sent(engine, "ana", None)
    event = ses_event("Delivery", "ses-x", "ana@example.com", run_id=run_id)
    event["mail"]["tags"]["bucket"] = [str((bucket_of("ana") + 1) % BUCKETS)]
    assert ingest(engine, event).orphan
    event["mail"]["tags"]["bucket"] = [str(bucket_of("ana"))]
    result = ingest(engine, event)
    assert (result.delivery_id, result.orphan) == (delivery_id, False)


def test_our_message_id_finds_the_delivery_when_tags_are_missing(engine: Engine) -> None:
    """No tags, but SES quotes our Message-ID, which names the run and its bucket."""
    run_id, delivery_id = sent(engine, "ana", None)
    event = ses_event("Delivery", "ses-x", "ana@example.com")
    message_id = make_message_id(run_id, "example.com", bucket_of("ana"))
    event["mail"]["commonHeaders"] = {"messageId": message_id}
    result = ingest(engine, event)
    assert (result.delivery_id, result.orphan) == (delivery_id, False)
    del event["mail"]["commonHeaders"]
    event["mail"]["headers"] = [{"name": "Message-ID", "value": message_id}]
    assert ingest(engine, event).delivery_id == delivery_id


def test_a_complaint_cancels_the_users_pending_runs(engine: Engine) -> None:
    """The unsubscribe a complaint makes cancels the user's pending run, in its transaction."""
    sent(engine, "ana", "ses-1")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO digest_runs (bucket, user_id, cadence, period_start, scheduled_for) "
                "VALUES (digest_bucket('ana'), 'ana', 'daily', now(), now())"
            )
        )
    assert ingest(engine, ses_event("Complaint", "ses-1", "ana@example.com")).unsubscribed
    with engine.connect() as conn:
        statuses = conn.execute(
            text("SELECT status FROM digest_runs WHERE user_id = 'ana' ORDER BY id")
        ).scalars()
        assert list(statuses) == ["sent", "cancelled"]


def test_unmatched_event_is_stored_as_orphan_and_still_suppresses(engine: Engine) -> None:
    """An event matching no delivery is kept as an orphan; its hard bounce still suppresses."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    result = ingest(engine, ses_event("Bounce", "ses-unknown", "zed@example.com", run_id=999))
    assert (result.orphan, result.delivery_id) == (True, None)
    [row] = feedback_rows(engine)
    assert (row.orphan, row.run_id, row.provider_message_id) == (True, 999, "ses-unknown")
    assert row.raw["mail"]["messageId"] == "ses-unknown"
    assert suppressions.is_suppressed(engine, "zed@example.com")
    assert status(engine, delivery_id)[0] == "sent"


# ---------------------------------------------------------------------------- replays


def test_replayed_sns_message_changes_nothing(engine: Engine) -> None:
    """The same SNS MessageId a second time is recorded once and applied once."""
    sent(engine, "ana", "ses-1")
    event = ses_event("Bounce", "ses-1", "ana@example.com", bounce_type="Transient")
    first = ingest(engine, envelope(event, "sns-1"), transient_limit=2)
    before = snapshot(engine)
    again = ingest(engine, envelope(event, "sns-1"), transient_limit=2)
    assert (first.replay, again.replay) == (False, True)
    assert snapshot(engine) == before
    assert not suppressions.is_suppressed(engine, "ana@example.com")  # counted once, not twice


def test_explicit_message_id_deduplicates_bare_events(engine: Engine) -> None:
    """A bare event given an sns_message_id is deduplicated on it too."""
    sent(engine, "ana", "ses-1")
    event = ses_event("Delivery", "ses-1", "ana@example.com")
    assert not ingest(engine, event, sns_message_id="m-1").replay
    assert ingest(engine, event, sns_message_id="m-1").replay
    assert len(feedback_rows(engine)) == 1


def test_ingest_joins_the_callers_transaction(engine: Engine) -> None:
    """Given a connection, ingest's work is undone with the caller's rollback."""
    sent(engine, "ana", "ses-1")
    with engine.connect() as conn:
        conn.begin()
        ingest(conn, ses_event("Bounce", "ses-1", "ana@example.com"))
        conn.rollback()
    assert feedback_rows(engine) == []
    assert not suppressions.is_suppressed(engine, "ana@example.com")


# ---------------------------------------------------------------------------- suppression


def test_transient_bounces_in_a_row_suppress_and_a_delivery_resets(engine: Engine) -> None:
    """N transient bounces in a row suppress; a Delivery in between starts the count again."""
    sent(engine, "ana", "ses-1")

    def soft() -> tuple[str, ...]:
        event = ses_event("Bounce", "ses-1", "ana@example.com", bounce_type="Transient")
        return ingest(engine, event, transient_limit=3).suppressed

    assert soft() == ()
    assert soft() == ()
    ingest(engine, ses_event("Delivery", "ses-2", "ana@example.com"))
    assert soft() == ()
    assert soft() == ()
    assert not suppressions.is_suppressed(engine, "ana@example.com")
    assert soft() == ("ana@example.com",)
    found = suppressions.get(engine, "ana@example.com")
    assert found is not None
    assert found.reason.startswith("ses: 3 transient bounces in a row")


def test_suppression_lifecycle_send_bounce_remove(engine: Engine, tmp_path: Path) -> None:
    """A real send, then its hard bounce suppresses the address; removing lifts it."""
    with engine.begin() as conn:
        conn.execute(ADD_RECIPIENT, {"user_id": "ana", "email": "ana@example.com"})
        conn.execute(
            text(
                """
                INSERT INTO digest_events (bucket, user_id, category, entity_type, entity_id,
                                           payload, created_at)
                VALUES (digest_bucket('ana'), 'ana', 'comment', 'post', 'p1',
                        '{"title": "Trip photos", "actor_name": "Ben"}',
                        now() - interval '1 hour')
                """
            )
        )
        schedule_once(conn, datetime.now(UTC), 0)
    outbox = tmp_path / "outbox"
    Worker(engine, Settings(secret_key="s", outbox=outbox), FileTransport(outbox)).run(drain=True)
    with engine.connect() as conn:
        delivery_id, run_id, provider_id = conn.execute(
            text("SELECT id, run_id, provider_message_id FROM deliveries")
        ).one()
    assert provider_id
    result = ingest(engine, ses_event("Bounce", provider_id, "ana@example.com", run_id=run_id))
    assert result.delivery_id == delivery_id
    assert suppressions.is_suppressed(engine, "ana@example.com")
    assert status(engine, delivery_id)[0] == "bounced"
    assert suppressions.remove(engine, "ana@example.com")
    assert not suppressions.is_suppressed(engine, "ana@example.com")


# ---------------------------------------------------------------------------- CLI


@pytest.fixture
def feedback_cli(digest_cli: Invoke) -> Invoke:
    """The real `digest` group on this test's database."""
    return digest_cli


def test_cli_ingests_jsonl_of_envelopes_and_bare_events(
    engine: Engine, feedback_cli: Invoke, tmp_path: Path
) -> None:
    """JSON Lines mixing SNS envelopes and bare events are all applied; a rerun is a no-op."""
    _, ana = sent(engine, "ana", "ses-1")
    _, ben = sent(engine, "ben", "ses-2")
    lines = [
        json.dumps(envelope(ses_event("Delivery", "ses-1", "ana@example.com"), "sns-1")),
        "",
        json.dumps(ses_event("Bounce", "ses-2", "ben@example.com", shape="notificationType")),
    ]
    path = tmp_path / "feedback.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = feedback_cli("feedback", "ingest", str(path))
    assert result.exit_code == 0, result.output
    assert "2 events: 2 new" in result.output
    assert (status(engine, ana)[0], status(engine, ben)[0]) == ("delivered", "bounced")
    again = feedback_cli("feedback", "ingest", "-", stdin=lines[0].encode())
    assert again.exit_code == 0, again.output
    assert "1 already seen" in again.output


def test_cli_ingests_one_pretty_printed_document(
    engine: Engine, feedback_cli: Invoke, tmp_path: Path
) -> None:
    """A single JSON document over many lines is one event."""
    _, ana = sent(engine, "ana", "ses-1")
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ses_event("Reject", "ses-1", "ana@example.com"), indent=2))
    result = feedback_cli("feedback", "ingest", str(path))
    assert result.exit_code == 0, result.output
    assert status(engine, ana)[0] == "rejected"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"eventType": "Open", "mail": {}}), "eventType/notificationType"),
        (json.dumps({"Type": "Notification", "MessageId": "x", "Message": "{"}), "SNS Message"),
        ("[1, 2]", "expected a JSON object"),
    ],
    ids=["syntax", "type", "envelope", "array"],
)
def test_cli_bad_line_names_its_number_and_changes_nothing(
    engine: Engine, feedback_cli: Invoke, tmp_path: Path, bad: str, message: str
) -> None:
    """A bad line fails the whole file as FILE:LINE: reason, before anything is applied."""
    _, ana = sent(engine, "ana", "ses-1")
    good = json.dumps(ses_event("Bounce", "ses-1", "ana@example.com"))
    path = tmp_path / "feedback.jsonl"
    path.write_text(f"{good}\n{bad}\n")
    before = snapshot(engine)
    result = feedback_cli("feedback", "ingest", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: {message}" in result.output
    assert "nothing was applied" in result.output
    assert snapshot(engine) == before
    assert status(engine, ana)[0] == "sent"


# ---------------------------------------------------------------------------- webhook


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


def sign(message: dict[str, Any], key: rsa.RSAPrivateKey = KEY) -> dict[str, Any]:
    raw = key.sign(canonical_string(message), padding.PKCS1v15(), hashes.SHA256())
    return {**message, "SignatureVersion": "2", "Signature": base64.b64encode(raw).decode()}


class Site:
    """The webhook app served by uvicorn on a real socket, with its fetches recorded."""

    def __init__(self, port: int, confirmed: list[str]) -> None:
        self.port = port
        self.confirmed = confirmed

    def post(self, body: bytes | dict[str, Any]) -> tuple[int, str]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/webhooks/ses", body=data, headers={"Content-Type": "text/plain"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()


@pytest.fixture
def site(engine: Engine) -> Iterator[Site]:
    """The webhook route in a Starlette app, served from a thread on a free port."""
    confirmed: list[str] = []

    def fetch(url: str) -> bytes:
        assert url == CERT_URL
        return CERT_PEM

    def confirm(url: str) -> bytes:
        confirmed.append(url)
        return b"<ConfirmSubscriptionResponse/>"

    route = ses_webhook_route(engine, Settings(), topics={TOPIC}, fetch=fetch, confirm=confirm)
    app = Starlette(routes=[route])
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "server thread died"
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield Site(listener.getsockname()[1], confirmed)
    server.should_exit = True
    thread.join(10)
    listener.close()


def test_webhook_applies_a_signed_notification_once(engine: Engine, site: Site) -> None:
    """A signed Notification is ingested under its MessageId; SNS's retry is a no-op 200."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    message = sign(envelope(ses_event("Complaint", "ses-1", "ana@example.com"), "sns-1"))
    assert site.post(message) == (200, "ok\n")
    assert status(engine, delivery_id)[0] == "complained"
    assert unsubscribed(engine, "ana")
    before = snapshot(engine)
    assert site.post(message) == (200, "replay\n")
    assert snapshot(engine) == before


def test_webhook_refuses_unsigned_or_mis_signed_messages(engine: Engine, site: Site) -> None:
    """Unsigned, tampered, foreign-key, off-topic, off-pattern or junk bodies: 403, no change."""
    sent(engine, "ana", "ses-1")
    good = sign(envelope(ses_event("Bounce", "ses-1", "ana@example.com"), "sns-1"))
    other_key, _ = make_signer()
    unsigned = {k: v for k, v in good.items() if k != "Signature"}
    s3 = "https://s3.amazonaws.com/SimpleNotificationService-0123abcd.pem"
    before = snapshot(engine)
    for body in (
        unsigned,
        {**good, "MessageId": "sns-2"},
        sign(unsigned, other_key),
        sign({**unsigned, "TopicArn": TOPIC + "-other"}),
        sign({**unsigned, "SigningCertURL": s3}),
        {**good, "SignatureVersion": "3"},
        b"not json",
    ):
        assert site.post(body)[0] == 403
    assert snapshot(engine) == before


def test_webhook_confirms_subscriptions_on_sns_hosts_only(engine: Engine, site: Site) -> None:
    """A signed SubscriptionConfirmation visits its SubscribeURL only when it is on SNS."""
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "sns-c",
        "Token": "t",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic",
        "SubscribeURL": SUBSCRIBE_URL,
        "Timestamp": "2026-11-24T12:00:00.000Z",
        "SigningCertURL": CERT_URL,
    }
    assert site.post(sign(confirmation)) == (200, "confirmed\n")
    assert site.confirmed == [SUBSCRIBE_URL]
    elsewhere = sign({**confirmation, "SubscribeURL": "https://evil.example/?Action=x"})
    assert site.post(elsewhere)[0] == 403
    assert site.confirmed == [SUBSCRIBE_URL]
    assert feedback_rows(engine) == []


def test_webhook_accepts_signature_version_1(engine: Engine, site: Site) -> None:
    """A SHA1withRSA (version 1) signature from the right certificate is accepted."""
    _, delivery_id = sent(engine, "ana", "ses-1")
    message = envelope(ses_event("Delivery", "ses-1", "ana@example.com"), "sns-v1")
    raw = KEY.sign(canonical_string(message), padding.PKCS1v15(), hashes.SHA1())
    signed = {**message, "SignatureVersion": "1", "Signature": base64.b64encode(raw).decode()}
    assert site.post(signed) == (200, "ok\n")
    assert status(engine, delivery_id)[0] == "delivered"


def test_webhook_refuses_a_certificate_from_another_host(engine: Engine, site: Site) -> None:
    """A signing certificate URL off the SNS host pattern is refused before any fetch."""
    sent(engine, "ana", "ses-1")
    before = snapshot(engine)
    for url in (
        "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-ab12.pem",
        "https://evil.example/SimpleNotificationService-ab12.pem",
        "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-ab12.pem",
    ):
        message = envelope(ses_event("Bounce", "ses-1", "ana@example.com"), "sns-x")
        assert site.post(sign({**message, "SigningCertURL": url}))[0] == 403
    assert snapshot(engine) == before
