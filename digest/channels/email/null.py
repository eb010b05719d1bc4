"""`null` transport: accepts every message and sends nothing (benchmarks, dry runs)."""

from __future__ import annotations

from digest.models import OutgoingMessage, SendResult


class NullTransport:
    """Drops messages; still builds them fully, so a benchmark measures the real work."""

    inline = True  # no network: the worker calls it directly, not through its send pool
    name = "null"

    def send(self, message: OutgoingMessage) -> SendResult:
        """Accept and forget `message`."""
        return SendResult(self.name, None)

    def close(self) -> None:
        """Nothing to release."""
