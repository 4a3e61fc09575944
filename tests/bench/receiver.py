"""The benchmark's fast webhook receiver (GATEWAY_BENCH_WEBHOOKS=on): its own process,
so its work is not the load generator's; answers every POST 204 at once, over
keep-alive connections as a CRM's web server would; counts what it got.

    python -m tests.bench.receiver     # prints its port, then serves
    GET /count  ->  {"posts": N}
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def app() -> web.Application:
    posts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal posts
        await request.read()
        posts += 1
        return web.Response(status=204)

    async def count(_request: web.Request) -> web.Response:
        return web.json_response({"posts": posts})

    application = web.Application()
    application.add_routes([web.post("/hooks", hook), web.get("/count", count)])
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
