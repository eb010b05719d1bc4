"""`fallback`: an ordered list of transports; when one is down the next one is tried."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from digest import logs
from digest.channels.base import SendError, Transport
from digest.models import OutgoingMessage, SendResult

log = logging.getLogger(__name__)


class FallbackTransport:
    """Tries each transport in order, moving on only when one reports itself down.

    A failure about the recipient (a 550, a rejected message) or an unknown outcome is
    final: the next transport would only send a copy. A transport found down is skipped
    for `cooldown` seconds so that every message does not wait for its timeout; when all
    are cooling down they are tried anyway, in order. `SendResult.transport` names the one
    that delivered.
    """

    def __init__(
        self,
        transports: Sequence[Transport],
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not transports:
            raise ValueError("fallback needs at least one transport")
        self.transports = list(transports)
        self.name = ",".join(t.name for t in self.transports)
        self.cooldown = cooldown
        self.clock = clock
        self._down_until: dict[int, float] = {}  # by position: two may share a name
        self._lock = threading.Lock()

    def _order(self) -> list[tuple[int, Transport]]:
        now = self.clock()
        every = list(enumerate(self.transports))
        with self._lock:
            up = [(i, t) for i, t in every if self._down_until.get(i, 0.0) <= now]
        return up or every

    def send(self, message: OutgoingMessage) -> SendResult:
        """Send through the first transport that is up."""
        failures: list[str] = []
        for index, transport in self._order():
            try:
                return transport.send(message)
            except SendError as exc:
                if not exc.down:
                    raise
                with self._lock:
                    self._down_until[index] = self.clock() + self.cooldown
                logs.event(
                    log,
                    "transport_down",
                    logging.WARNING,
                    transport=transport.name,
                    reason=exc.reason,
                )
                failures.append(f"{transport.name}: {exc.reason}")
        raise SendError(
            "transient", "every transport is down (" + "; ".join(failures) + ")", down=True
        )

    def close(self) -> None:
        """Close every transport."""
        for transport in self.transports:
            transport.close()
