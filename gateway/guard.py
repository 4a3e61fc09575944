"""Database work as the daemon runs it: timed per operation, and any database trouble
turned into a temporary failure (451 4.3.0: the MTA retries; an API request gets 503).
Its own module so that processes that do no mail -- the webhook sender -- need not
load the mail path to use it."""

from __future__ import annotations

from typing import Any, Callable

import sqlalchemy.exc

from gateway import metrics
from gateway.errors import TemporaryFailure
from gateway.replies import REPLIES


def guarded(fn: Callable[..., Any], operation: str) -> Callable[..., Any]:
    """Database work, timed under ``operation`` (one of metrics.DB_OPERATIONS: label
    values are stable names, never Python names); trouble of any kind is temporary:
    451 4.3.0, the MTA retries."""
    if operation not in metrics.DB_OPERATIONS:
        raise ValueError(f"guarded(): operation {operation!r} is not one of metrics.DB_OPERATIONS; name it there")
    histogram = metrics.db_duration.labels(operation=operation)

    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            with histogram.time():
                return fn(*args, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise database_failure(exc) from exc

    return run


def database_failure(exc: sqlalchemy.exc.SQLAlchemyError) -> TemporaryFailure:
    first_line = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
    return TemporaryFailure(REPLIES.database_unavailable, f"database: {type(exc).__name__}: {first_line[:300]}")
