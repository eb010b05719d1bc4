"""`file` transport: writes each message as `<outbox>/run-<id>.eml` plus its `.html` part."""

from __future__ import annotations

import os
from pathlib import Path

from digest.channels.base import SendError
from digest.models import OutgoingMessage, SendResult


class FileTransport:
    """Writes messages atomically (temp file + rename): a retry overwrites, never duplicates."""

    inline = True  # no network: the worker calls it directly, not through its send pool
    name = "file"

    def __init__(self, outbox: Path):
        self.outbox = outbox
        try:
            outbox.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SendError("fatal", f"cannot create outbox {outbox}: {exc}") from exc

    def send(self, message: OutgoingMessage) -> SendResult:
        """Write `run-<id>.eml` and `run-<id>.html`; the .eml path is the provider id."""
        stem = self.outbox / f"run-{message.run_id}"
        try:
            _write_atomic(stem.with_suffix(".html"), message.html.encode())
            _write_atomic(stem.with_suffix(".eml"), message.data)
        except OSError as exc:
            raise SendError("transient", f"cannot write to {self.outbox}: {exc}") from exc
        return SendResult(self.name, str(stem.with_suffix(".eml")))

    def close(self) -> None:
        """Nothing to release."""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
