"""The load generator: an asyncio SMTP/LMTP client on raw streams.

One task per connection.  Per message it writes MAIL, RCPT and DATA in one packet
(RFC 2920 pipelining; MAIL FROM is the run's ``mail_from``, or built per message
from ``factory.mail_from(seq)`` when ``factory.per_message_sender`` says so), reads
their three replies, and only after 354 writes the message (the per-message header
block, then the shared body, both prebuilt and dot-stuffed) and reads the final
reply.  Latency is from writing MAIL to reading the final reply.  Every loop is
bounded: a cell ends at its deadline or message cap, and every message and
connection step has a timeout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.bench.messages import MessageFactory

STEP_TIMEOUT = 30.0        # greeting, EHLO/LHLO, MAIL/RCPT/DATA replies, QUIT
MESSAGE_TIMEOUT = 600.0    # DATA of one message up to its final reply
READ_LIMIT = 1 << 16


class ProtocolError(Exception):
    def __init__(self, stage: str, code: int, text: str):
        super().__init__(f"{stage}: {code} {text}")
        self.stage, self.code, self.text = stage, code, text


@dataclass
class LoadResult:
    ok: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of the 250s
    errors: dict[str, int] = field(default_factory=dict)  # "stage code" -> count
    error_samples: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    sent_bytes: int = 0
    connections_failed: int = 0
    next_seq: int = 0

    @property
    def wall(self) -> float:
        return max(self.ended - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.ok / self.wall if self.ok else 0.0

    def error(self, key: str, sample: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.error_samples) < 10:
            self.error_samples.append(sample[:300])


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    for _ in range(100):  # bounded: no reply of ours has more lines
        line = await reader.readline()
        if not line:
            raise ConnectionResetError("server closed the connection")
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    first = lines[0]
    code = int(first[:3]) if first[:3].isdigit() else 0
    return code, " | ".join(lines)


class _Claims:
    """Message numbers handed out across connections, up to a cap and a deadline."""

    def __init__(self, first: int, cap: int, deadline: float):
        self.next, self.end, self.deadline = first, first + cap, deadline

    def take(self) -> int | None:
        if self.next >= self.end or time.perf_counter() >= self.deadline:
            return None
        seq = self.next
        self.next += 1
        return seq


async def _connection(host: str, port: int, lmtp: bool, factory: MessageFactory, rcpt: str, mail_from: str,
                      claims_box: list[_Claims], start: asyncio.Event, ready: Callable[[], None],
                      result: LoadResult, on_ok: Callable[[int], None] | None) -> None:
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, limit=READ_LIMIT)
            code, text = await _reply(reader)
            if code != 220:
                raise ProtocolError("greeting", code, text)
            writer.write(b"LHLO bench.example\r\n" if lmtp else b"EHLO bench.example\r\n")
            code, text = await _reply(reader)
            if code != 250:
                raise ProtocolError("lhlo" if lmtp else "ehlo", code, text)
    except (OSError, asyncio.TimeoutError, ProtocolError) as exc:
        result.connections_failed += 1
        result.error(f"connect {type(exc).__name__}", repr(exc))
        ready()
        return
    ready()
    await start.wait()
    claims = claims_box[0]
    fixed_from = None if factory.per_message_sender else mail_from.encode()
    rcpt_b = rcpt.encode()
    try:
        for _ in range(claims.end - claims.next + 1):  # bounded by the cap as well
            seq = claims.take()
            if seq is None:
                break
            header, body = factory.wire(seq)
            size = len(header) + len(body) - 3
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(MESSAGE_TIMEOUT):
                    sender = fixed_from if fixed_from is not None else factory.mail_from(seq).encode()
                    writer.write(b"MAIL FROM:<%s> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n" % (sender, size, rcpt_b))
                    mail = await _reply(reader)
                    rcpt_reply = await _reply(reader)
                    data = await _reply(reader)
                    if data[0] != 354:
                        failed = ("mail", mail) if mail[0] != 250 else ("rcpt", rcpt_reply) if rcpt_reply[0] != 250 else ("data", data)
                        writer.write(b"RSET\r\n")
                        await _reply(reader)
                        raise ProtocolError(failed[0], failed[1][0], failed[1][1])
                    writer.write(header)
                    writer.write(body)
                    await writer.drain()
                    result.sent_bytes += size
                    code, text = await _reply(reader)
                    if code != 250:
                        raise ProtocolError("final", code, text)
            except ProtocolError as exc:
                result.error(f"{exc.stage} {exc.code}", f"message {seq}: {exc}")
                continue
            t1 = time.perf_counter()
            result.ok += 1
            result.latencies.append(t1 - t0)
            result.ended = max(result.ended, t1)
            if on_ok is not None:
                on_ok(result.ok)
        async with asyncio.timeout(STEP_TIMEOUT):
            writer.write(b"QUIT\r\n")
            await _reply(reader)
    except (OSError, asyncio.TimeoutError, ProtocolError) as exc:
        result.error(f"connection {type(exc).__name__}", repr(exc))
    finally:
        writer.close()
        try:
            async with asyncio.timeout(5):
                await writer.wait_closed()
        except (OSError, asyncio.TimeoutError):
            pass


async def run_load(host: str, port: int, *, lmtp: bool, conns: int, factory: MessageFactory, rcpt: str,
                   mail_from: str | None = None, seconds: float, max_messages: int, first_seq: int = 0,
                   on_start: Callable[[], None] | None = None,
                   on_ok: Callable[[int], None] | None = None) -> LoadResult:
    """Open ``conns`` connections, then send messages on all of them until ``seconds``
    have passed or ``max_messages`` were started, whichever comes first.  The clock
    starts when every connection has greeted (connection setup is not measured)."""
    if mail_from is None:
        mail_from = factory.mail_from(first_seq)
    result = LoadResult()
    start = asyncio.Event()
    pending = [conns]
    all_ready = asyncio.Event()

    def ready() -> None:
        pending[0] -= 1
        if pending[0] == 0:
            all_ready.set()

    claims_box: list[_Claims] = [_Claims(first_seq, max_messages, float("inf"))]
    tasks = [asyncio.create_task(_connection(host, port, lmtp, factory, rcpt, mail_from, claims_box, start,
                                             ready, result, on_ok)) for _ in range(conns)]
    try:
        async with asyncio.timeout(STEP_TIMEOUT * 2):
            await all_ready.wait()
    except asyncio.TimeoutError:
        result.error("connect timeout", "not every connection greeted in time")
    if on_start is not None:
        on_start()
    result.started = time.perf_counter()
    claims_box[0].deadline = result.started + seconds
    start.set()
    hard = seconds + MESSAGE_TIMEOUT + 2 * STEP_TIMEOUT
    done, not_done = await asyncio.wait(tasks, timeout=hard)
    for task in not_done:
        task.cancel()
        result.error("cell timeout", "a connection outlived the cell's hard time limit")
    for task in done:
        if task.exception() is not None:
            result.error(f"client {type(task.exception()).__name__}", repr(task.exception()))
    if not result.ended:
        result.ended = time.perf_counter()
    result.next_seq = claims_box[0].next
    return result
