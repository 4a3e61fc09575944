"""Benchmark messages: real mail of each route, unique per message, cheap to produce.

Routes (``ROUTES``; tests/bench/README.md):

- ``dropbox``: what a salesperson's client sends with the dropbox in Bcc: From the
  user, To a customer (one of ``CUSTOMERS`` addresses; the benchmark sends all of
  them before measuring, so every measured message finds its lead).
- ``dropbox-new``: the same, To a customer never seen before (one per message and
  run id): every message creates a lead.
- ``alias-new``: a fresh external sender (envelope and From) writes to the Sales
  alias: every message opens a record with a new contact.
- ``alias-reply`` (Sales) and ``alias-reopen`` (Service): sender ``i = seq % threads``
  answers the message that opened thread ``i`` (sent beforehand: ``thread_starts``)
  with In-Reply-To and References: every message joins that record (and reopens it
  when it is in a closed stage).

Every message has a unique Message-ID (so the gateway's idempotency check never
short-cuts a delivery).  1 KB messages are a plain-text body; bigger
ones are multipart/mixed with a short text part and a base64 PDF-typed attachment
filling up to the size (big mail is attachments).

Only the header block differs per message; the body is built once per size,
already CRLF-terminated and dot-stuffed, and sent by reference.
"""

from __future__ import annotations

import base64
import random
import re
import secrets
from email.utils import formatdate

SENDER = "hashimoto@zylker.example"
CUSTOMERS = 100
SALES = "sales@in.zylker.example"      # rules/zylker.toml: reopen = false
SERVICE = "service@in.zylker.example"  # reopen = true, Resolved/Closed -> Reopened
ROUTES = ("dropbox", "dropbox-new", "alias-new", "alias-reply", "alias-reopen")
ALIAS_OF = {"alias-new": SALES, "alias-reply": SALES, "alias-reopen": SERVICE}
ALIAS_NAME = {SALES: "Zylker Sales", SERVICE: "Zylker Support"}
EXTERNAL = "customer-bench.example"

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000_000, "mb": 1000_000}


def parse_size(text: str) -> int:
    """'1k', '100KB', '1m', '10MB', '2500' -> bytes (decimal units: 10 MB must stay
    under the gateway's 10485760-octet limit with its headers)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r} (e.g. 1k, 100k, 1m, 10m)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def size_label(size: int) -> str:
    for unit, div in (("MB", 1000_000), ("KB", 1000)):
        if size >= div and size % div == 0:
            return f"{size // div} {unit}"
    return f"{size} B"


_TEXT = (
    "Dear customer,\r\n\r\n"
    "thank you for your interest in our products. Please find our quotation for the\r\n"
    "requested items below; prices are valid for thirty days from the date above.\r\n"
)


class MessageFactory:
    """Produces (header bytes, shared body bytes) for message number ``seq`` of a route.

    ``rcpt`` is the envelope recipient for the gateway when the route has a fixed one
    (the aliases; None for the dropbox routes: each gateway's own dropbox address).
    ``per_message_sender``: MAIL FROM differs per message (``mail_from(seq)``); else it
    is ``mail_from(0)`` for every message.  The reply routes need ``threads`` and
    ``thread_id`` of the ``thread_starts`` sent beforehand."""

    def __init__(self, size: int, run_id: str | None = None, route: str = "dropbox", threads: int = 0,
                 thread_id: str = "", alias: str | None = None):
        if route not in ROUTES and route != "thread-start":
            raise ValueError(f"unknown route {route!r}")
        if route in ("alias-reply", "alias-reopen", "thread-start") and (threads < 1 or not thread_id):
            raise ValueError(f"{route} needs the threads sent beforehand")
        self.size = size
        self.route = route
        self.run_id = run_id or secrets.token_hex(4)
        self.threads, self.thread_id = threads, thread_id
        self.rcpt = alias or ALIAS_OF.get(route)
        self.per_message_sender = route != "dropbox" and route != "dropbox-new"
        self.date = formatdate(localtime=False)
        self._label = size_label(size)
        sample = self._header(0)
        self.body = self._body(max(200, size - len(sample)))
        for line in self.body.split(b"\r\n"):
            assert not line.startswith(b"."), "benchmark bodies must not need dot-stuffing"
        assert self.body.endswith(b"\r\n")

    def thread_sender(self, i: int) -> str:
        return f"t{i}.{self.thread_id}@{EXTERNAL}"

    def thread_message_id(self, i: int) -> str:
        return f"<thread.{self.thread_id}.{i}@{EXTERNAL}>"

    def mail_from(self, seq: int) -> str:
        """The envelope sender (the From address)."""
        if self.route in ("dropbox", "dropbox-new"):
            return SENDER
        if self.route == "alias-new":
            return f"c.{self.run_id}.{seq}@{EXTERNAL}"
        if self.route == "thread-start":
            return self.thread_sender(seq)
        return self.thread_sender(seq % self.threads)

    def _header(self, seq: int) -> bytes:
        route = self.route
        if route == "dropbox" or route == "dropbox-new":
            if route == "dropbox":
                n = seq % CUSTOMERS
                to = f"Customer {n} <customer{n}@zillum-bench.example>"
            else:  # never seen before: a new lead per message
                to = f"New Customer {seq} <new{seq}.{self.run_id}@zillum-bench.example>"
            return (
                f"From: Taro Hashimoto <{SENDER}>\r\n"
                f"To: {to}\r\n"
                f"Subject: Quotation {seq} ({self._label})\r\n"
                f"Date: {self.date}\r\n"
                f"Message-ID: <bench.{self.run_id}.{self.size}.{seq}@zylker.example>\r\n"
                "MIME-Version: 1.0\r\n"
            ).encode()
        alias = self.rcpt or SALES
        to = f"{ALIAS_NAME[alias]} <{alias}>"
        if route == "alias-new":
            return (
                f"From: Customer {seq} <{self.mail_from(seq)}>\r\n"
                f"To: {to}\r\n"
                f"Subject: Enquiry {seq} ({self._label})\r\n"
                f"Date: {self.date}\r\n"
                f"Message-ID: <bench.{self.run_id}.{self.size}.{seq}@{EXTERNAL}>\r\n"
                "MIME-Version: 1.0\r\n"
            ).encode()
        if route == "thread-start":  # seq = the thread
            return (
                f"From: Customer {seq} <{self.thread_sender(seq)}>\r\n"
                f"To: {to}\r\n"
                f"Subject: Question {seq} on order {self.thread_id}\r\n"
                f"Date: {self.date}\r\n"
                f"Message-ID: {self.thread_message_id(seq)}\r\n"
                "MIME-Version: 1.0\r\n"
            ).encode()
        i = seq % self.threads
        parent = self.thread_message_id(i)
        return (
            f"From: Customer {i} <{self.thread_sender(i)}>\r\n"
            f"To: {to}\r\n"
            f"Subject: Re: Question {i} on order {self.thread_id}\r\n"
            f"Date: {self.date}\r\n"
            f"Message-ID: <bench.{self.run_id}.{self.size}.{seq}@{EXTERNAL}>\r\n"
            f"In-Reply-To: {parent}\r\n"
            f"References: {parent}\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode()

    def header(self, seq: int) -> bytes:
        return self._header(seq)

    def _body(self, room: int) -> bytes:
        rng = random.Random(self.size)
        if room < 4000:
            head = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            text = _TEXT.encode()
            lines = [text]
            filler = room - len(head) - len(text)
            i = 0
            while filler > 0:
                line = f"Item {i:04d}: widget, quantity {rng.randint(1, 99)}, unit price {rng.randint(10, 999)}.00 JPY".encode()[: max(1, filler - 2)]
                lines.append(line + b"\r\n")
                filler -= len(line) + 2
                i += 1
            return head + b"".join(lines)
        boundary = f"bench-{self.size}-boundary"
        head = (
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
            f"{_TEXT}\r\n"
            f"--{boundary}\r\n"
            'Content-Type: application/pdf; name="quotation.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="quotation.pdf"\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        b64_room = room - len(head) - len(tail)
        # 76 base64 chars + CRLF per 57 octets of attachment.
        octets = max(57, (b64_room // 78) * 57)
        payload = rng.randbytes(octets)
        encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n").rstrip(b"\r\n")
        return head + encoded + tail

    def wire(self, seq: int) -> tuple[bytes, bytes]:
        """The DATA section: per-message header, shared body with the final dot."""
        return self._header(seq), self.body + b".\r\n"

    def total_size(self, seq: int = 0) -> int:
        return len(self._header(seq)) + len(self.body)


def thread_starts(route: str, threads: int, thread_id: str | None = None) -> MessageFactory:
    """The 1 KB messages that open the threads ``route`` (alias-reply, alias-reopen)
    answers: message ``i`` (0 <= i < threads) from sender ``i`` to the route's alias,
    no In-Reply-To, a known Message-ID.  Returns the factory of the starts; make the
    route's own with ``replies_to(starts, route, size)``."""
    return MessageFactory(1000, route="thread-start", threads=threads, thread_id=thread_id or secrets.token_hex(4),
                          alias=ALIAS_OF[route])


def replies_to(starts: MessageFactory, route: str, size: int) -> MessageFactory:
    return MessageFactory(size, route=route, threads=starts.threads, thread_id=starts.thread_id)
