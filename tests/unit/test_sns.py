"""SNS signature verification, signed with a key and self-signed certificate of our own."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from digest.feedback.sns import SnsError, canonical_string, is_sns_url, verify

TOPIC = "arn:aws:sns:eu-west-1:123456789012:digest-ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
ALGORITHMS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}


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


def sign(envelope: dict[str, Any], key: rsa.RSAPrivateKey = KEY) -> dict[str, Any]:
    """`envelope` with its Signature filled in for its SignatureVersion."""
    algorithm = ALGORITHMS[envelope["SignatureVersion"]]()
    raw = key.sign(canonical_string(envelope), padding.PKCS1v15(), algorithm)
    return {**envelope, "Signature": base64.b64encode(raw).decode()}


def notification(version: str = "2", **changes: Any) -> dict[str, Any]:
    """A signed SNS Notification carrying an SES Delivery event."""
    envelope = {
        "Type": "Notification",
        "MessageId": "6f1e0a6c-0000-4000-8000-000000000001",
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps({"eventType": "Delivery", "mail": {"messageId": "m-1"}}),
        "Timestamp": "2026-11-24T12:00:00.000Z",
        "SignatureVersion": version,
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }
    envelope.update(changes)
    return sign(envelope) if version in ALGORITHMS else {**envelope, "Signature": "AAAA"}


def fetcher(pem: bytes = CERT_PEM) -> tuple[Callable[[str], bytes], list[str]]:
    """A fetch function serving `pem` for any URL, and the list of URLs it was asked for."""
    asked: list[str] = []

    def fetch(url: str) -> bytes:
        asked.append(url)
        return pem

    return fetch, asked


@pytest.mark.parametrize("version", ["1", "2"])
def test_valid_message_is_accepted(version: str) -> None:
    """A Notification signed with SHA1 (v1) or SHA256 (v2) by the certificate's key passes."""
    fetch, asked = fetcher()
    verify(notification(version), topics={TOPIC}, fetch=fetch)
    assert asked == [CERT_URL]


def test_message_without_subject_is_accepted() -> None:
    """Subject is signed only when present."""
    envelope = notification()
    del envelope["Subject"]
    envelope = sign(envelope)
    verify(envelope, topics={TOPIC}, fetch=fetcher()[0])


def test_subscription_confirmation_signs_token_and_url() -> None:
    """A SubscriptionConfirmation signs SubscribeURL and Token, not Subject."""
    envelope = sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "m",
            "Token": "tok",
            "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe",
            "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
            "Timestamp": "2026-11-24T12:00:00.000Z",
            "SignatureVersion": "1",
            "SigningCertURL": CERT_URL,
        }
    )
    verify(envelope, topics={TOPIC}, fetch=fetcher()[0])
    with pytest.raises(SnsError, match="does not match"):
        verify({**envelope, "Token": "other"}, topics={TOPIC}, fetch=fetcher()[0])


def test_tampered_message_is_refused() -> None:
    """Changing a signed field after signing breaks the signature."""
    envelope = {**notification(), "Message": json.dumps({"eventType": "Complaint"})}
    with pytest.raises(SnsError, match="signature does not match"):
        verify(envelope, topics={TOPIC}, fetch=fetcher()[0])


def test_signature_by_another_key_is_refused() -> None:
    """A signature made with a key other than the certificate's is refused."""
    other, _ = make_signer()
    envelope = notification()
    envelope = sign({k: v for k, v in envelope.items() if k != "Signature"}, other)
    with pytest.raises(SnsError, match="signature does not match"):
        verify(envelope, topics={TOPIC}, fetch=fetcher()[0])


def test_garbage_signature_is_refused() -> None:
    """A Signature that is not base64 is refused before any fetch."""
    fetch, asked = fetcher()
    with pytest.raises(SnsError, match="base64"):
        verify({**notification(), "Signature": "!!"}, topics={TOPIC}, fetch=fetch)
    assert asked == []


@pytest.mark.parametrize(
    "url",
    [
        "https://s3.amazonaws.com/SimpleNotificationService-0123abcd.pem",
        "https://s3.eu-west-1.amazonaws.com/bucket/SimpleNotificationService-0123abcd.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-01.pem",
        "https://evil.example/SimpleNotificationService-0123abcd.pem",
        "http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem",
        "https://sns.eu-west-1.amazonaws.com/other.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-01.pem?x=1",
        "https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-01.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-01.pem",
    ],
    ids=["s3", "s3-path", "suffix", "other-host", "http", "path", "query", "userinfo", "port"],
)
def test_certificate_url_off_pattern_is_refused_without_fetching(url: str) -> None:
    """Only https://sns.<region>.amazonaws.com/SimpleNotificationService-*.pem is fetched."""
    fetch, asked = fetcher()
    with pytest.raises(SnsError, match="SigningCertURL"):
        verify(notification(SigningCertURL=url), topics={TOPIC}, fetch=fetch)
    assert asked == []


def test_china_region_certificate_url_is_accepted() -> None:
    """The .com.cn SNS hosts match the pattern too."""
    assert is_sns_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-ab12.pem")


def test_unknown_topic_is_refused() -> None:
    """A correctly signed message for a topic not on the allow-list is refused."""
    fetch, asked = fetcher()
    with pytest.raises(SnsError, match="allow-list"):
        verify(notification(), topics={TOPIC + "-other"}, fetch=fetch)
    with pytest.raises(SnsError, match="allow-list"):
        verify(notification(), topics=(), fetch=fetch)
    assert asked == []


@pytest.mark.parametrize("version", ["3", "", None, 2])
def test_unknown_signature_version_is_refused(version: Any) -> None:
    """Only SignatureVersion "1" and "2" are understood."""
    with pytest.raises(SnsError, match="SignatureVersion"):
        verify(notification("x", SignatureVersion=version), topics={TOPIC}, fetch=fetcher()[0])


def test_unknown_type_is_refused() -> None:
    """A Type outside Notification and the two confirmations has no canonical form."""
    with pytest.raises(SnsError, match="Type"):
        verify(notification(Type="Surprise"), topics={TOPIC}, fetch=fetcher()[0])


def test_expired_certificate_is_refused() -> None:
    """A certificate outside its validity period is refused."""
    fetch, _ = fetcher()
    later = datetime.now(UTC) + timedelta(days=60)
    with pytest.raises(SnsError, match="not valid now"):
        verify(notification(), topics={TOPIC}, fetch=fetch, now=later)


def test_fetch_failure_and_bad_pem_are_refusals() -> None:
    """A fetcher that fails or serves junk makes an SnsError, not a crash."""

    def broken(url: str) -> bytes:
        raise OSError("network down")

    with pytest.raises(SnsError, match="could not fetch"):
        verify(notification(), topics={TOPIC}, fetch=broken)
    with pytest.raises(SnsError, match="not a PEM"):
        verify(notification(), topics={TOPIC}, fetch=fetcher(b"junk")[0])


def test_certificate_is_fetched_once_with_a_cache() -> None:
    """With a cache, the second message from the same certificate URL does not fetch."""
    fetch, asked = fetcher()
    cache: dict[str, rsa.RSAPublicKey] = {}
    verify(notification("1"), topics={TOPIC}, fetch=fetch, cache=cache)
    verify(notification("2"), topics={TOPIC}, fetch=fetch, cache=cache)
    assert asked == [CERT_URL]
