"""`slack` channel: `chat.postMessage` through slack_sdk's `WebClient`, one HTTP request per
attempt, every failure classified for the queue.

Slack has no idempotency key, so nothing here retries: slack_sdk's retry handlers are off
(its default one resends after a lost connection, which can post twice, and its 429
handler sleeps in the worker's thread); the run waits in the queue instead. Errors:

- HTTP 429 (`ratelimited`): transient, the earliest retry from `Retry-After`;
- the channel or user does not exist or is archived: permanent, the destination gone;
- a message Slack refuses (too long, bad blocks, the bot not in the channel): permanent;
- the token refused (`invalid_auth`, `token_revoked`, `account_inactive`, …): fatal, loudly;
- 502/503/504 and `service_unavailable`: transient, Slack down; other 5xx and
  `internal_error`/`fatal_error` (Slack: "some aspect of the operation" may have
  succeeded): unknown outcome;
- unreachable (refused, no route, TLS, connect timeout): transient, down, nothing sent;
- no answer after the request went out (read timeout, hang-up): unknown outcome.

At most one message a second per destination (Slack's posting limit per channel): a token
bucket per destination, in this process. A message whose slot is less than `max_wait`
(1 s) away waits for it in the sending thread; a busier destination's message is deferred
at once (transient, `deferred`, retry after the free slot) with no request made.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Mapping
from typing import cast
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from digest.channels.base import SendError
from digest.channels.http import retry_after
from digest.channels.ratelimit import DestinationBuckets
from digest.channels.slack_blocks import SlackMessage, validate_destination
from digest.config import Settings, check_service_url
from digest.errors import DigestError, ValidationError
from digest.models import SendResult

__all__ = ["SlackMessage", "SlackSender", "classify_api_error"]

log = logging.getLogger(__name__)
# slack_sdk's own log lines repeat what our SendError says (and at DEBUG it would format
# every request body): it logs to a logger of ours that is quiet unless turned up.
_sdk_log = logging.getLogger(f"{__name__}.sdk")
_sdk_log.setLevel(logging.CRITICAL)

# Slack's posting limit: about one message a second per channel (bursts allowed briefly).
RATE_PER_DESTINATION = 1.0
MAX_WAIT = 1.0

RATE_LIMITED = frozenset({"ratelimited", "rate_limited", "message_limit_exceeded"})
# The destination does not exist (any more): nothing sent to it can succeed.
GONE = frozenset(
    {"channel_not_found", "is_archived", "channel_is_archived", "user_not_found", "user_disabled"}
)
# This message can never go as it is, or not to this channel until someone acts.
REFUSED = frozenset(
    {
        "msg_too_long",
        "no_text",
        "invalid_blocks",
        "invalid_blocks_format",
        "invalid_arguments",
        "too_many_attachments",
        "not_in_channel",
        "cannot_dm_bot",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "access_denied",
    }
)
# Every later message would fail the same way: the token or the app is refused.
FATAL = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "token_expired",
        "account_inactive",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
        "ekm_access_denied",
        "team_access_not_granted",
    }
)
UNAVAILABLE_STATUS = frozenset({502, 503, 504})
UNAVAILABLE = frozenset({"service_unavailable", "request_timeout"})
# Slack documents that "some aspect of the operation" may have succeeded.
MAYBE_POSTED = frozenset({"internal_error", "fatal_error"})


class SlackSender:
    """Posts each message with one `chat.postMessage` request; make one per process (its
    per-destination buckets are the process's rate limit)."""

    name = "slack"

    def __init__(
        self,
        settings: Settings,
        *,
        buckets: DestinationBuckets | None = None,
        max_wait: float = MAX_WAIT,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not settings.slack_bot_token:
            raise DigestError("DIGEST_SLACK_BOT_TOKEN must be set to send to Slack")
        check_service_url("DIGEST_SLACK_BASE_URL", settings.slack_base_url)
        self.client = WebClient(
            token=settings.slack_bot_token,
            base_url=settings.slack_base_url,
            # urllib takes a float; slack_sdk's annotation says int
            timeout=cast(int, settings.slack_timeout),
            retry_handlers=[],
            logger=_sdk_log,
        )
        self.buckets = buckets or DestinationBuckets(RATE_PER_DESTINATION)
        self.max_wait = max_wait
        self.sleep = sleep

    def send(self, message: SlackMessage) -> SendResult:
        """Post `message`; the result's id is `channel/ts`, how Slack names a message."""
        try:
            destination = validate_destination(message.destination)
        except ValidationError as exc:
            raise SendError("permanent", str(exc)) from exc
        free, wait = self.buckets.reserve(destination, self.max_wait)
        if not free:
            raise SendError(
                "transient",
                f"slack: {destination} is at its limit of one message a second "
                f"(next slot in {wait:.1f} s)",
                retry_after=wait,
                deferred=True,
            )
        if wait > 0:
            self.sleep(wait)
        try:
            response = self.client.chat_postMessage(
                channel=destination,
                text=message.text,
                blocks=list(message.blocks),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            raise classify_api_error(exc) from exc
        except URLError as exc:
            # urllib wraps what fails while connecting and sending: nothing was posted.
            raise SendError("transient", f"slack unreachable: {exc.reason}", down=True) from exc
        except (OSError, http.client.HTTPException) as exc:
            # Failing while waiting for the answer (read timeout, hang-up): the request
            # went out whole and Slack may have posted it.
            raise SendError("unknown", f"slack: no answer after sending: {exc!r}") from exc
        return SendResult(self.name, f"{response.get('channel', destination)}/{response['ts']}")

    def close(self) -> None:
        """Nothing to release: urllib opens a connection per request."""


def classify_api_error(exc: SlackApiError) -> SendError:
    """The SendError for an answer from Slack that is not ok."""
    response = exc.response
    status = int(response.status_code)
    data = response.data if isinstance(response.data, Mapping) else {}
    code = str(data.get("error") or "no_error_code")[:100]
    reason = f"slack {code} (HTTP {status})"
    if status == 429 or code in RATE_LIMITED:
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        return SendError("transient", reason, retry_after=retry_after(headers.get("retry-after")))
    if code in FATAL:
        log.critical("slack_token_refused code=%s reason=%r", code, reason)
        return SendError("fatal", reason)
    if code in GONE:
        return SendError("permanent", reason, gone=True)
    if code in REFUSED:
        return SendError("permanent", reason)
    if status in UNAVAILABLE_STATUS or code in UNAVAILABLE:
        return SendError("transient", reason, down=True)
    if code in MAYBE_POSTED or status >= 500:
        return SendError("unknown", f"{reason}: Slack may have posted it")
    # An error code this table does not know yet: retry (bounded by max_attempts) rather
    # than give the message up for good.
    return SendError("transient", reason)
