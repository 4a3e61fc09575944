"""Benchmark messages: real dropbox mail, unique per message, cheap to produce.

Each message is what a salesperson's client sends with the dropbox in Bcc: From the
user, To a customer (one of ``CUSTOMERS`` addresses, so the first messages create
leads and the rest find them), a unique Message-ID (so the gateway's idempotency
check never short-cuts a delivery).  1 KB messages are a plain-text body; bigger
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
    """Produces (header bytes, shared body bytes) for message number ``seq``."""

    def __init__(self, size: int, run_id: str | None = None):
        self.size = size
        self.run_id = run_id or secrets.token_hex(4)
        self.date = formatdate(localtime=False)
        sample = self._header(0)
        self.body = self._body(max(200, size - len(sample)))
        for line in self.body.split(b"\r\n"):
            assert not line.startswith(b"."), "benchmark bodies must not need dot-stuffing"
        assert self.body.endswith(b"\r\n")

    def _header(self, seq: int) -> bytes:
        n = seq % CUSTOMERS
        return (
            f"From: Taro Hashimoto <{SENDER}>\r\n"
            f"To: Customer {n} <customer{n}@zillum-bench.example>\r\n"
            f"Subject: Quotation {seq} ({size_label(self.size)})\r\n"
            f"Date: {self.date}\r\n"
            f"Message-ID: <bench.{self.run_id}.{self.size}.{seq}@zylker.example>\r\n"
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
