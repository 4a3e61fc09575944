"""Structured logging: events with keys, context bound through contextvars.

JSON lines when stderr is not a terminal, readable console output when it is.
The standard library's logging (aiosmtpd, SQLAlchemy, alembic) goes through the
same renderer so an operator reads one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto", stream=None) -> None:  # type: ignore[no-untyped-def]
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # filter_by_level first: a suppressed event costs a level check, not a timestamp.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    # aiosmtpd logs every command at INFO (with addresses); keep it to warnings.
    mail_log = logging.getLogger("mail.log")
    mail_log.setLevel(max(_LEVELS[level], logging.WARNING))
    # aiosmtpd 1.4 warns about its own use of Session.login_data on every AUTH.
    mail_log.filters[:] = [lambda record: "login_data is deprecated" not in record.getMessage()]
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(max(_LEVELS[level], logging.WARNING))


def get(name: str = "gateway") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
