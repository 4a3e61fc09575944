"""The reference: a bare aiosmtpd + uvloop sink that answers 250 at once.

Run as its own process (so its CPU time and RSS are measurable like the gateway's):

    python -m tests.bench.sink --lmtp 127.0.0.1:PORT --smtp 127.0.0.1:PORT

It uses aiosmtpd's stock SMTP and LMTP classes (line-by-line DATA reader, content
kept twice in the envelope: that is the point of the comparison) and a handler that
accepts every recipient and answers 250 to DATA without looking at the message.
SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

# Large enough for the 10 MB cells plus headers (aiosmtpd's default is 32 MiB already).
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class SinkHandler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if getattr(server, "_bench_lmtp", False):
            return "\r\n".join(["250 2.0.0 OK"] * max(1, len(envelope.rcpt_tos)))
        return "250 2.0.0 OK"


class _SinkLMTP(LMTP):
    _bench_lmtp = True


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(lmtp: str | None, smtp: str | None) -> None:
    loop = asyncio.get_running_loop()
    handler = SinkHandler()
    servers = []
    for listen, cls in ((lmtp, _SinkLMTP), (smtp, SMTP)):
        if not listen:
            continue
        host, port = _listen(listen)

        def factory(cls=cls):  # type: ignore[no-untyped-def]
            return cls(handler, data_size_limit=DATA_SIZE_LIMIT, enable_SMTPUTF8=True,
                       hostname="sink.bench.example", loop=loop)

        servers.append(await loop.create_server(factory, host=host, port=port, reuse_address=True))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmtp", help="host:port for LMTP")
    parser.add_argument("--smtp", help="host:port for SMTP")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.lmtp, args.smtp))


if __name__ == "__main__":
    main()
