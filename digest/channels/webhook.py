"""`webhook` channel: a Standard Webhooks POST, signed with the `standardwebhooks` library,
one HTTP request per attempt over the standard library's urllib.

Every attempt signs the same body under the same `webhook-id` (the receiver's idempotency
key) with the attempt's own `webhook-timestamp`, so a run retried hours later still passes
the receiver's five-minute window. Answers (Standard Webhooks' status handling):

- 2xx: sent;
- 410: the endpoint is gone: permanent, marked `gone` (record it, send nothing more to it
  until the URL changes);
- 429 and 5xx: transient, the earliest retry from `Retry-After` when given;
- any other status, redirects included (never followed): transient, bounded by the
  run's attempts;
- unreachable, or a timeout before the request went out: transient, down;
- no answer after the request went out (read timeout, hang-up): unknown outcome; a
  receiver that keeps webhook-ids drops the repeat, so at-least-once is exactly once in
  effect.

URLs must be https (plain http only to this machine). urllib honours the usual proxy
variables (`HTTPS_PROXY`, `NO_PROXY`): an egress proxy that refuses internal addresses is
the way to keep recipients' URLs from reaching internal services.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.message import Message
from typing import Any
from urllib.error import HTTPError, URLError

from standardwebhooks import Webhook

from digest.channels.base import SendError
from digest.channels.http import retry_after
from digest.channels.webhook_payload import WebhookMessage, validate_url
from digest.config import Settings, check_webhook_secret
from digest.errors import DigestError, ValidationError
from digest.models import SendResult
from digest.render.text import clean_text

__all__ = ["WebhookMessage", "WebhookSender", "classify_status"]

USER_AGENT = "digest-webhooks/1"
# What a refusal's body may add to its reason.
_BODY_SHOWN = 200


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not an instruction: following it would move a signed
    webhook to a URL the recipient never gave."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """Signs and POSTs each message; safe to call from many threads at once."""

    name = "webhook"

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time):
        secret = settings.webhook_secret
        if not secret:
            raise DigestError("DIGEST_WEBHOOK_SECRET must be set to send webhooks")
        check_webhook_secret("DIGEST_WEBHOOK_SECRET", secret)
        self.signer = Webhook(secret)
        self.timeout = settings.webhook_timeout
        self.clock = clock
        self.opener = urllib.request.build_opener(_NoRedirects())

    def send(self, message: WebhookMessage) -> SendResult:
        """POST `message`, signed now; the result's id is the webhook-id."""
        try:
            url = validate_url(message.url)
        except ValidationError as exc:
            raise SendError("permanent", str(exc)) from exc
        now = datetime.fromtimestamp(int(self.clock()), UTC)
        signature = self.signer.sign(message.webhook_id, now, message.body.decode("utf-8"))
        request = urllib.request.Request(
            url,
            data=message.body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "webhook-id": message.webhook_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signature,
            },
        )
        try:
            with self.opener.open(request, timeout=self.timeout):
                pass  # a 2xx: the body of the answer says nothing we need
        except HTTPError as exc:
            raise classify_status(exc.code, exc.headers, _read_some(exc)) from exc
        except URLError as exc:
            # urllib wraps what fails while connecting and sending: nothing was taken.
            raise SendError("transient", f"webhook unreachable: {exc.reason}", down=True) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Failing while waiting for the answer: the request went out whole.
            raise SendError("unknown", f"webhook: no answer after sending: {exc!r}") from exc
        return SendResult(self.name, message.webhook_id)

    def close(self) -> None:
        """Nothing to release: urllib opens a connection per request."""


def classify_status(status: int, headers: Message | Mapping[str, str], body: bytes) -> SendError:
    """The SendError for a non-2xx answer from the receiver."""
    said = clean_text(body.decode("utf-8", "replace"), _BODY_SHOWN)
    reason = f"webhook HTTP {status}" + (f": {said}" if said else "")
    wait = retry_after(headers.get("Retry-After"))
    if status == 410:
        return SendError("permanent", f"{reason} (endpoint gone)", gone=True)
    if status == 429:
        return SendError("transient", reason, retry_after=wait)
    if status >= 500:
        return SendError("transient", reason, retry_after=wait, down=True)
    return SendError("transient", reason, retry_after=wait)


def _read_some(exc: HTTPError) -> bytes:
    try:
        return exc.read(_BODY_SHOWN * 4)
    except (OSError, http.client.HTTPException):  # the body did not come: the status did
        return b""
