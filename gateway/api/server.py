"""The API listener: uvicorn serving the FastAPI app on the daemon's own event loop.

The daemon owns the process's signals (SIGTERM, SIGHUP: gateway/app.py), so uvicorn's
own signal capture is switched off; the daemon stops it with ``stop()``."""

from __future__ import annotations

import contextlib
import socket
from typing import Any, Iterator

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Public hook of uvicorn.Server: the daemon handles SIGTERM/SIGINT itself.
        yield


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
