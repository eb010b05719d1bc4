"""`POST /webhooks/ses`: SES feedback through SNS, acted on only once its signature checks
out (`digest.feedback.sns`), then applied like `digest feedback ingest` applies a file."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Final

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from digest import logs, untrusted
from digest.config import Settings
from digest.feedback import sns
from digest.feedback.apply import ingest
from digest.feedback.ses import MAX_BODY_BYTES, FeedbackError

log = logging.getLogger(__name__)

WEBHOOK_PATH: Final = "/webhooks/ses"
TOPICS_ENV: Final = "DIGEST_SNS_TOPICS"


def ses_webhook_route(
    engine: Engine,
    settings: Settings,
    *,
    topics: Collection[str] | None = None,
    fetch: sns.Fetch = sns.fetch_https,
    confirm: Callable[[str], object] | None = None,
    transient_limit: int | None = None,
) -> Route:
    """`POST /webhooks/ses`: SNS-signed SES feedback, and SNS subscription confirmations.

    Anything unsigned, mis-signed, off-pattern or for another topic gets a 403 and changes
    nothing. `fetch` gets signing certificates; `confirm` visits a SubscribeURL (both
    https-only urllib by default, injectable for tests).
    """
    allowed = frozenset(topics) if topics is not None else settings.sns_topics
    if not allowed:
        # every message is refused
        logs.event(log, "ses_webhook_no_topics", logging.WARNING, setting=TOPICS_ENV)
    limit = settings.transient_bounce_limit if transient_limit is None else transient_limit
    visit = confirm or sns.fetch_https
    cache: sns.KeyCache = {}

    async def endpoint(request: Request) -> Response:
        body = await request.body()  # at most MAX_BODY_BYTES: the route answers 413 beyond
        try:
            envelope = untrusted.loads(body, max_bytes=MAX_BODY_BYTES)
        except untrusted.NotJsonError:  # not an SNS message, like anything unsigned
            return PlainTextResponse("forbidden\n", status_code=403)
        except untrusted.JsonError as exc:  # JSON that would crash us or the database
            logs.event(log, "ses_webhook_unusable_body", logging.WARNING, reason=str(exc))
            return PlainTextResponse(f"{exc}\n", status_code=400)
        try:
            await run_in_threadpool(sns.verify, envelope, topics=allowed, fetch=fetch, cache=cache)
        except sns.SnsError as exc:
            logs.event(log, "ses_webhook_refused", logging.WARNING, reason=exc.reason)
            return PlainTextResponse("forbidden\n", status_code=403)
        kind = envelope["Type"]
        if kind == "SubscriptionConfirmation":
            url = envelope["SubscribeURL"]
            if not sns.is_sns_url(url):
                logs.event(
                    log,
                    "ses_webhook_refused",
                    logging.WARNING,
                    reason="SubscribeURL is not an SNS URL",
                )
                return PlainTextResponse("forbidden\n", status_code=403)
            try:
                await run_in_threadpool(visit, url)
            except Exception as exc:  # SNS sends the confirmation again; say why it failed
                logs.event(log, "ses_webhook_not_confirmed", logging.WARNING, reason=str(exc))
                return PlainTextResponse("could not confirm\n", status_code=502)
            logs.event(log, "ses_webhook_confirmed", topic=envelope["TopicArn"])
            return PlainTextResponse("confirmed\n")
        if kind != "Notification":
            logs.event(log, "ses_webhook_ignored", type=kind, topic=envelope["TopicArn"])
            return PlainTextResponse("ok\n")
        try:
            result = await run_in_threadpool(
                ingest,
                engine,
                envelope,
                sns_message_id=envelope["MessageId"],
                transient_limit=limit,
            )
        except FeedbackError as exc:
            logs.event(log, "ses_webhook_unusable_notification", logging.WARNING, reason=str(exc))
            return PlainTextResponse(f"{exc}\n", status_code=400)
        return PlainTextResponse("replay\n" if result.replay else "ok\n")

    return Route(WEBHOOK_PATH, endpoint, methods=["POST"], max_body_size=MAX_BODY_BYTES)
