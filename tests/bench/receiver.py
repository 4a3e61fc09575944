"""The benchmark's fast webhook receiver (`run.py --webhooks`): its own process,
so its work is not the load generator's; answers every POST 204 at once, over
keep-alive connections as a CRM's web server would.  The bench reads what reached it
from the gateway's database (delivered deliveries).

    python -m tests.bench.receiver     # prints its port, then serves
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def app() -> web.Application:
    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    application = web.Application()
    application.add_routes([web.post("/hooks", hook)])
    return application


async def main() -> None:
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(port, flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main())
    sys.exit(0)
