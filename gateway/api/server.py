"""The API listener: uvicorn serving the FastAPI app on the daemon's own event loop.

The daemon owns the process's signals (SIGTERM, SIGHUP: gateway/app.py), so uvicorn's
own signal capture is switched off; the daemon stops it with ``stop()``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any, Iterator

import uvicorn


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Public hook of uvicorn.Server: the daemon handles SIGTERM/SIGINT itself.
        yield

    async def main_loop(self) -> None:
        # uvicorn.Server's own loop (a tick every 0.1 s: the Date header, should_exit),
        # but woken by stop() at once rather than at the next tick -- a stop took
        # 0.2 s of waiting for it.
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exit.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn.Server's own, except that its fixed 0.1 s pause for connections to
        # take the shutdown request is only taken when there are connections.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        connections = list(self.server_state.connections)
        for connection in connections:
            connection.shutdown()
        if connections:
            await asyncio.sleep(0.1)
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                await self._wait_tasks_to_complete()
        except TimeoutError:
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


class ApiServer:
    def __init__(self, app: Any, sock: socket.socket):
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False, server_header=False,
                                proxy_headers=False)
        self.server = _Server(config)
        self.sock = sock

    async def serve(self) -> None:
        await self.server.serve(sockets=[self.sock])

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.exit.set()
