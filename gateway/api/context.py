"""What the API's routes share: the database, the current rules, and a thread pool of
its own for database work (the event loop also serves SMTP/LMTP sessions and must
never wait on the database; a separate pool keeps a 10,000-row listing from taking
the filing workers)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

import sqlalchemy.exc
from fastapi.responses import Response

from gateway.api.pagination import render
from gateway.api.problems import Problem
from gateway.delivery import guarded
from gateway.errors import TemporaryFailure
from gateway.workers import drain
from gateway.rules.index import RuleIndex
from gateway.store.db import Database

T = TypeVar("T")

# Database errors that no retry cures (the SMTP side answers 451 all the same: there,
# a retry by the MTA is what keeps the mail).
_NOT_TEMPORARY = (sqlalchemy.exc.DataError, sqlalchemy.exc.ProgrammingError)


class ApiContext:
    def __init__(self, database: Database, rules: Callable[[], RuleIndex], threads: int = 2,
                 recipients_changed: Callable[[], None] | None = None, changed: Callable[[], None] | None = None):
        self.database = database
        # Called after every committed write: the outbox tells the CRM about it.
        self._changed = changed
        self._rules = rules
        # Called (in the API's threads) after a dropbox address changed: the daemon
        # rewrites the Postfix recipient map when it keeps one.
        self._recipients_changed = recipients_changed
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-api")

    @property
    def rules(self) -> RuleIndex:
        """The rules now (a reload swaps them; a request uses the ones it started with)."""
        return self._rules()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) on a read connection, in the API's threads."""
        return await self._run("api_read", self.database.reading, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(conn, *args) in a write transaction (committed on success), in the API's threads."""
        result = await self._run("api_write", self.database.writing, fn, *args)
        if self._changed is not None:
            self._changed()
        return result

    async def _run(self, operation: str, how: Callable[..., T], fn: Callable[..., Any], *args: Any) -> T:
        # Timed and mapped as the SMTP side's database work (delivery.guarded): trouble
        # is temporary, 503 here as it is 451 there.
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, guarded(how, operation), fn, *args)
        except TemporaryFailure as exc:
            if isinstance(exc.__cause__, _NOT_TEMPORARY):
                # The same request would fail again: a bug of ours (a value we let
                # through that the database refuses), answered 500 and logged.
                raise exc.__cause__ from None
            raise Problem(503, f"{exc.detail}; retry later") from exc

    async def listing(self, fn: Callable[..., dict[str, Any]], *args: Any) -> Response:
        """A list page: fn(conn, *args) -> {"items", "next_cursor"} read, then encoded to
        JSON, both in the API's threads (the route's response_model documents it)."""
        body = await self.read(fn, *args)
        content = await asyncio.get_running_loop().run_in_executor(self._pool, render, body)
        return Response(content, media_type="application/json")

    async def recipients_changed(self) -> None:
        if self._recipients_changed is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._recipients_changed)

    async def shutdown(self, timeout: float) -> None:
        """After the listener stopped: a read or write still in a thread ends first."""
        await drain(self._pool, timeout)

