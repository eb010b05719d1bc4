"""`ses` transport: Amazon SES API v2 (`sesv2 send_email`) with our own MIME as `Content.Raw`.

SES has no idempotency key, so this transport never retries on its own: botocore's
retries are off (one HTTP request per `send`) and every failure is classified for the
worker, which knows the run and decides. Region and credentials come from the standard AWS
chain (environment, shared config/credentials files, container or instance role);
`ses_region` overrides the region and `ses_endpoint_url` the endpoint (tests, local SES).
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from digest import logs
from digest.channels.base import SendError
from digest.channels.http import retry_after
from digest.config import Settings
from digest.models import OutgoingMessage, SendResult

log = logging.getLogger(__name__)

# sesv2 error codes (botocore `Error.Code`), from the SendEmail operation's error list plus
# the generic AWS throttling, server and authentication codes.
THROTTLED = frozenset(
    {"Throttling", "ThrottlingException", "TooManyRequestsException", "LimitExceededException"}
)
REJECTED = frozenset(
    {
        "MessageRejected",
        "MailFromDomainNotVerifiedException",
        "BadRequestException",
        "NotFoundException",
    }
)
STOPPED = frozenset({"AccountSuspendedException", "SendingPausedException"})
SERVER = frozenset({"InternalFailure", "InternalServerError", "ServiceUnavailable"})
# Every later send would fail the same way: wrong, expired or unauthorised credentials.
REFUSED = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "MissingAuthenticationToken",
    }
)
# Connecting is the slow part only when the endpoint is unreachable; fail over quickly.
CONNECT_TIMEOUT_CAP = 10.0


class SesTransport:
    """Sends each message as one sesv2 `send_email` call with `run_id`/`bucket`/`attempt`
    tags.

    One client serves every sending thread: boto3 documents clients (unlike sessions and
    resources) as thread-safe once created, as long as no one mutates them or registers
    event hooks on them
    (https://boto3.amazonaws.com/v1/documentation/api/latest/guide/clients.html,
    "Multithreading or multiprocessing with clients"). It is built here, in one thread, on a
    session of its own, because creating clients from the shared default session is not.
    """

    name = "ses"

    def __init__(self, settings: Settings, client: Any | None = None):
        self.from_address = settings.from_address
        self.configuration_set = settings.ses_configuration_set
        self.client: Any = client if client is not None else make_client(settings)

    def send(self, message: OutgoingMessage) -> SendResult:
        """Hand `message` to SES; the returned MessageId is what SES feedback will carry."""
        params: dict[str, Any] = {
            # The verified identity SES sends as (and the envelope sender); the raw
            # message's own From header is what recipients see.
            "FromEmailAddress": self.from_address,
            "Destination": {"ToAddresses": [message.to_address]},
            "Content": {"Raw": {"Data": message.data}},
            # Tags come back in every SES event for this message: feedback finds its run,
            # on the shard its bucket names.
            "EmailTags": [
                {"Name": "run_id", "Value": str(message.run_id)},
                {"Name": "bucket", "Value": str(message.bucket)},
                {"Name": "attempt", "Value": str(message.attempt)},
            ],
        }
        if self.configuration_set:
            params["ConfigurationSetName"] = self.configuration_set
        try:
            response = self.client.send_email(**params)
        except ClientError as exc:
            raise classify_client_error(exc) from exc
        except BotoCoreError as exc:
            raise classify_botocore_error(exc) from exc
        return SendResult(self.name, str(response["MessageId"]))

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()


def make_client(settings: Settings) -> Any:
    """An sesv2 client that makes exactly one HTTP request per call, within the timeouts."""
    config = Config(
        # boto3's retries would resend the same email (a read timeout is retried): off.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=min(settings.ses_timeout, CONNECT_TIMEOUT_CAP),
        read_timeout=settings.ses_timeout,
        # One pooled connection per sending thread, none opened and thrown away.
        max_pool_connections=max(settings.send_concurrency, 10),
    )
    try:
        return boto3.session.Session().client(
            "sesv2",
            region_name=settings.ses_region,
            endpoint_url=settings.ses_endpoint_url,
            config=config,
        )
    except NoRegionError as exc:
        raise SendError("fatal", "ses: no AWS region: set DIGEST_SES_REGION or AWS_REGION") from exc
    except (BotoCoreError, ValueError) as exc:
        raise SendError("fatal", f"ses: cannot create the sesv2 client: {exc}") from exc


def classify_client_error(exc: ClientError) -> SendError:
    """The SendError for an error answer from SES (the request reached the service)."""
    error = exc.response.get("Error", {})
    metadata = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code") or "Unknown")
    status = int(metadata.get("HTTPStatusCode") or 0)
    reason = f"ses {code} (HTTP {status}): {error.get('Message') or exc}"
    if code in STOPPED:
        logs.event(log, "ses_sending_stopped", logging.CRITICAL, code=code, reason=reason)
        return SendError("fatal", reason)
    if code in REFUSED:
        logs.event(log, "ses_credentials_refused", logging.CRITICAL, code=code, reason=reason)
        return SendError("fatal", reason)
    if code in THROTTLED or status == 429:
        headers = metadata.get("HTTPHeaders", {})
        return SendError("transient", reason, retry_after=retry_after(headers.get("retry-after")))
    if code in REJECTED:
        return SendError("permanent", reason)
    if code in SERVER or status >= 500:
        return SendError("transient", reason, down=True)
    # An error code this table does not know yet: retry (bounded by max_attempts) rather
    # than give the message up for good.
    return SendError("transient", reason)


def classify_botocore_error(exc: BotoCoreError) -> SendError:
    """The SendError for a failure without an answer from SES."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        reason = (
            f"ses: {exc}: configure AWS credentials (environment, ~/.aws/credentials, "
            "or an instance/container role)"
        )
        logs.event(log, "ses_no_credentials", logging.CRITICAL, reason=reason)
        return SendError("fatal", reason)
    if isinstance(exc, ConnectionError | CredentialRetrievalError):
        # Refused, unresolvable, TLS failure or connect timeout: nothing was sent.
        return SendError("transient", f"ses unreachable: {exc}", down=True)
    if isinstance(exc, ParamValidationError):
        return SendError("permanent", f"ses refused the request locally: {exc}")
    # ReadTimeoutError, ConnectionClosedError and any other HTTP failure after the request
    # went out: SES may have accepted the message.
    return SendError("unknown", f"ses: no answer after sending: {exc}")
