"""The Slack sender over real HTTP against the Slack stand-in: one request per attempt, every
error class, and at most one message a second per destination."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from digest.channels.base import SendError
from digest.channels.ratelimit import DestinationBuckets
from digest.channels.slack import SlackSender
from digest.channels.slack_blocks import SlackMessage
from digest.config import Settings
from digest.errors import DigestError
from digest.models import SendResult
from standins.server import HangUp
from standins.slack import SlackStandIn, error, rate_limited, server_error, stall

TOKEN = "xoxb-standin-token"
TIMEOUT = 0.5  # the client's; stalls go past it
BLOCKS = ({"type": "section", "text": {"type": "mrkdwn", "text": "*Ana* liked a post"}},)


def message(destination: str = "C0123", run_id: int = 1) -> SlackMessage:
    return SlackMessage(run_id, destination, "Ana liked a post", BLOCKS)


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    with SlackStandIn(TOKEN) as standin:
        yield standin


def sender_for(base_url: str, token: str = TOKEN, **kwargs: object) -> SlackSender:
    settings = Settings(slack_bot_token=token, slack_base_url=base_url, slack_timeout=TIMEOUT)
    return SlackSender(settings, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def sender(slack: SlackStandIn) -> Iterator[SlackSender]:
    sender = sender_for(slack.base_url)
    yield sender
    sender.close()


def failure(sender: SlackSender, msg: SlackMessage | None = None) -> SendError:
    with pytest.raises(SendError) as caught:
        sender.send(msg or message())
    return caught.value


def test_posts_the_message_with_the_bot_token(slack: SlackStandIn, sender: SlackSender) -> None:
    """chat.postMessage with the channel, fallback text and blocks, the token as a bearer
    header and link unfurling off; the result names the channel and the message's ts."""
    result = sender.send(message("C0123"))
    (posted,) = slack.posted
    assert result == SendResult("slack", f"C0123/{posted.ts}")
    (request,) = slack.requests
    assert request.authorization == f"Bearer {TOKEN}"
    assert (request.channel, request.text) == ("C0123", "Ana liked a post")
    assert request.blocks == list(BLOCKS)
    assert request.body["unfurl_links"] is False
    assert request.body["unfurl_media"] is False


def test_rate_limited_is_transient_with_retry_after_and_no_sleep(
    slack: SlackStandIn, sender: SlackSender
) -> None:
    """429: transient, earliest retry from Retry-After, one request, no waiting in the
    sender (the run waits in the queue)."""
    slack.script(rate_limited(30))
    started = time.monotonic()
    error_ = failure(sender)
    assert time.monotonic() - started < 5
    assert (error_.kind, error_.retry_after, error_.deferred) == ("transient", 30.0, False)
    assert "ratelimited" in error_.reason
    assert len(slack.requests) == 1
    assert slack.posted == []


@pytest.mark.parametrize("code", ["channel_not_found", "is_archived", "user_not_found"])
def test_a_missing_destination_is_permanent_and_gone(
    slack: SlackStandIn, sender: SlackSender, code: str
) -> None:
    """The channel or user does not exist (any more): permanent for that destination, marked
    gone, tried once."""
    slack.script(error(code))
    error_ = failure(sender)
    assert (error_.kind, error_.gone) == ("permanent", True)
    assert code in error_.reason
    assert len(slack.requests) == 1


@pytest.mark.parametrize("code", ["msg_too_long", "invalid_blocks", "not_in_channel"])
def test_a_message_slack_refuses_is_permanent(
    slack: SlackStandIn, sender: SlackSender, code: str
) -> None:
    """Slack refuses this message (or the bot is not in the channel): sending it again would
    fail the same way."""
    slack.script(error(code))
    error_ = failure(sender)
    assert (error_.kind, error_.gone) == ("permanent", False)


@pytest.mark.parametrize("code", ["invalid_auth", "token_revoked", "account_inactive"])
def test_a_refused_token_is_fatal_and_loud(
    slack: SlackStandIn, sender: SlackSender, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The token no longer works: fatal (stop sending to Slack), with a CRITICAL line."""
    slack.script(error(code))
    with caplog.at_level(logging.CRITICAL, logger="digest.channels.slack"):
        error_ = failure(sender)
    assert error_.kind == "fatal"
    assert any(r.levelno == logging.CRITICAL and code in r.getMessage() for r in caplog.records)


def test_a_wrong_token_is_fatal(slack: SlackStandIn) -> None:
    """A token Slack does not know gets invalid_auth from the stand-in itself: fatal."""
    sender = sender_for(slack.base_url, token="xoxb-wrong")
    assert failure(sender).kind == "fatal"
    assert slack.posted == []


def test_server_errors_that_may_have_posted_are_unknown(
    slack: SlackStandIn, sender: SlackSender
) -> None:
    """500 internal_error or fatal_error: Slack says some of it may have been done, so the
    outcome is unknown (the delivery setting decides), never a plain retry."""
    slack.script(server_error(500, "internal_error"), server_error(500, "fatal_error"))
    assert failure(sender).kind == "unknown"
    assert failure(sender).kind == "unknown"
    assert len(slack.requests) == 2


@pytest.mark.parametrize("status", [502, 503, 504])
def test_unavailable_is_transient_and_down(
    slack: SlackStandIn, sender: SlackSender, status: int
) -> None:
    """A gateway or an unavailable service answered: nothing was posted, try later."""
    slack.script(server_error(status, "service_unavailable"))
    error_ = failure(sender)
    assert (error_.kind, error_.down) == ("transient", True)


def test_a_stall_past_the_timeout_is_unknown(slack: SlackStandIn, sender: SlackSender) -> None:
    """The request went out and no answer came in time: unknown outcome (Slack has no
    idempotency key), and indeed the message was posted."""
    slack.script(stall(TIMEOUT + 1.0))
    error_ = failure(sender)
    assert error_.kind == "unknown"
    assert "no answer" in error_.reason
    deadline = time.monotonic() + 5
    while not slack.posted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(slack.posted) == 1
    assert len(slack.requests) == 1


def test_a_reply_lost_after_the_request_is_unknown_and_not_retried() -> None:
    """The server read the request and hung up: unknown, and exactly one request (slack_sdk's
    default handler would send it again: a second message in the channel)."""
    with HangUp() as server:
        sender = sender_for(f"{server.url}/api/")
        assert failure(sender).kind == "unknown"
        time.sleep(0.2)  # a retry, if any, would have arrived by now
        assert len(server.requests) == 1
        assert b"POST /api/chat.postMessage" in server.requests[0]


def test_connection_refused_is_transient_and_down() -> None:
    """Nothing listens: transient, the service down, nothing sent."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    error_ = failure(sender_for(f"http://127.0.0.1:{port}/api/"))
    assert (error_.kind, error_.down) == ("transient", True)


def test_two_messages_to_one_destination_are_a_second_apart(
    slack: SlackStandIn, sender: SlackSender
) -> None:
    """Slack allows one message a second per channel: the second waits for its slot (less
    than the sender's bounded wait), so Slack sees them a second apart."""
    sender.send(message("C1"))
    sender.send(message("C1"))
    first, second = slack.requests
    assert second.at - first.at >= 0.9
    assert len(slack.posted_to("C1")) == 2


def test_two_destinations_do_not_wait_for_each_other(
    slack: SlackStandIn, sender: SlackSender
) -> None:
    """Messages to two channels both go at once."""
    started = time.monotonic()
    sender.send(message("C1"))
    sender.send(message("C2"))
    assert time.monotonic() - started < 0.9
    assert [p.channel for p in slack.posted] == ["C1", "C2"]


def test_a_destination_busier_than_the_wait_is_deferred_without_a_request(
    slack: SlackStandIn,
) -> None:
    """With no wait allowed, the second message within the second is deferred: transient,
    marked deferred, retry after the free slot, and no request made."""
    sender = sender_for(slack.base_url, buckets=DestinationBuckets(1.0), max_wait=0.0)
    sender.send(message("C1"))
    error_ = failure(sender, message("C1"))
    assert (error_.kind, error_.deferred) == ("transient", True)
    assert error_.retry_after == pytest.approx(1.0, abs=0.2)
    assert len(slack.requests) == 1
    sender.send(message("C2"))
    assert len(slack.requests) == 2


def test_no_token_is_refused_at_start() -> None:
    """Without DIGEST_SLACK_BOT_TOKEN the sender is not made: one clear line."""
    with pytest.raises(DigestError, match="DIGEST_SLACK_BOT_TOKEN"):
        SlackSender(Settings())


def test_messages_to_a_bad_destination_never_leave(
    slack: SlackStandIn, sender: SlackSender
) -> None:
    """A destination that is not a Slack id or channel name is permanent before any request."""
    error_ = failure(sender, message("C1\nX"))
    assert error_.kind == "permanent"
    assert slack.requests == []


def test_a_plain_http_base_url_elsewhere_is_refused_at_start() -> None:
    """The token would travel in clear: the sender refuses such a base URL even when the
    settings were made in code rather than read from the environment."""
    with pytest.raises(DigestError, match="DIGEST_SLACK_BASE_URL must be an https:// URL"):
        sender_for("http://slack.example.com/api/")
