"""Session-level state of the listeners, shared by SMTP, LMTP and submission: how many
sessions are open (limits in all and per client), whether we are stopping, how many
transactions are between 354 and their last reply, and the slots for big messages in
memory.  It belongs to the server, not to filing (gateway/delivery.py)."""

from __future__ import annotations

from gateway import metrics
from gateway.replies import REPLIES, Reply
from gateway.workers import BigMessages


class ConnectionLimits:
    """Sessions at once, in all and per client address (all listeners together)."""

    def __init__(self, total: int, per_client: int):
        self.total_limit, self.per_client_limit = total, per_client
        self.total = 0
        self.by_client: dict[str, int] = {}

    def open(self, peer: str) -> Reply | None:
        self.total += 1
        count = self.by_client[peer] = self.by_client.get(peer, 0) + 1
        if self.total > self.total_limit or count > self.per_client_limit:
            return REPLIES.too_many_connections
        return None

    def close(self, peer: str) -> None:
        self.total -= 1
        left = self.by_client.get(peer, 1) - 1
        if left > 0:
            self.by_client[peer] = left
        else:
            self.by_client.pop(peer, None)


class Sessions:
    def __init__(self, connections: ConnectionLimits | None = None, big_in_memory: int = 4):
        self.connections = connections or ConnectionLimits(500, 50)
        # Messages over 1 MB held in memory at once (reading waits beyond that).
        self.big_messages = BigMessages(big_in_memory)
        # Set on SIGTERM: new commands get 421 4.3.2.
        self.stopping = False
        # Transactions between 354 and their last reply (the stop waits for them);
        # exported as gateway_deliveries_in_flight (property below).
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        # By the difference: several servers in one process (tests) add up in the one gauge.
        metrics.deliveries_in_flight.inc(value - self._in_flight)
        self._in_flight = value
