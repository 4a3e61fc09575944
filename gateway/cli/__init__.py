"""The `gateway` command: argument parsing, and the one place errors become output.

Each module holds a group of commands; it parses their arguments, calls the module
that does the work, and prints what that module renders (text, or ``--json``):

    serve.py       serve, check, reload, db upgrade
    dropbox.py     dropbox address|regenerate|vcard, postfix-maps
    records.py     record show|stage, export, email raw|attachment
    sending.py     dkim keygen|dns, quota status, passwd
    explain.py     explain
    quarantine.py  quarantine list|replay
    review.py      review list|show|approve|reject
    tokens.py      token create|list|revoke (the HTTP API's bearer tokens)
    imports.py     import contacts|leads (CSV or JSON lines, the API's import core)
    webhooks.py    webhooks list|retry|test (the rules' [[webhooks]] and their deliveries)
    common.py      exit codes, settings and rules loading, opening the database, --json

Each contributes its commands through ``PARSERS`` (command name -> function adding its
parser); build_parser() adds them in the order `gateway --help` has always listed them.

Commands that only look -- export, record show, quota status, email raw, email attachment, explain,
check, quarantine list, review list|show -- open the database read-only (store.db.make_readonly_engine):
they never migrate the schema and never write the rules into the database (issue 11:
`gateway export -c other.toml` used to deactivate the organisations other.toml lacks).
Only serve, db upgrade, reload and the commands that exist to change something write.

Exit codes and errors (results on stdout; errors, warnings and logs on stderr):

    0    done (also when stdout is closed early: `gateway export | head`)
    1    it cannot be done: one line per problem, ``gateway: <message>``, naming the
         thing and the fix.  main() maps gateway.errors.UserError (StageError,
         ReplayError, SchemaNotCurrent, ...) to its message, ConfigError to one line
         per problem (file:line [key]), and a database error (SQLAlchemyError) to
         ``gateway: database: <type>: <first line>``.
    2    the command line is wrong (argparse's usage message)
    130  interrupted (Ctrl-C)

Anything else -- a KeyError, an IndexError, any other bug -- is not caught: Python
prints the traceback (and exits 1), so a bug never reads like a user's mistake.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from gateway import __version__
from gateway.cli import dropbox, explain, imports, quarantine, records, review, sending, serve, tokens, webhooks
from gateway.cli.common import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from gateway.errors import ConfigError, UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser

__all__ = ["EXIT_FAIL", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

# The order `gateway --help` lists the commands in.
_ORDER = ("serve", "check", "db", "dropbox", "record", "dkim", "quota", "reload", "explain", "postfix-maps",
          "quarantine", "review", "passwd", "export", "email", "token", "import",
          "webhooks")


def _parsers() -> dict[str, AddParser]:
    found: dict[str, AddParser] = {}
    for module in (serve, dropbox, records, sending, explain, quarantine, review, tokens, imports, webhooks):
        found.update(module.PARSERS)
    assert set(found) == set(_ORDER), set(found) ^ set(_ORDER)
    return found


def build_parser() -> argparse.ArgumentParser:
    default_config = os.environ.get("GATEWAY_CONFIG", "gateway.toml")
    config_help = f"path to gateway.toml (default: $GATEWAY_CONFIG or ./gateway.toml; now {default_config})"
    # --config before the command (`gateway -c X check`) or after it (`gateway check
    # -c X`); after wins.  SUPPRESS: a subcommand without it keeps the one before.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", type=Path, default=argparse.SUPPRESS, help=config_help)
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Mail gateway for CRMs: BCC dropbox filing, email-in pipelines, outbound relay.",
        epilog="Environment overrides: GATEWAY_DATABASE_URL, GATEWAY_LMTP_LISTEN, GATEWAY_SMTP_LISTEN, "
               "GATEWAY_SUBMISSION_LISTEN (host:port), GATEWAY_RELAY_URL (smtp://host:port).",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--config", "-c", type=Path, default=Path(default_config), help=config_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = _parsers()
    for name in _ORDER:
        parsers[name](sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":  # serve sets up logging from gateway.toml
        from gateway import logs

        # Commands print results on stdout; their logs go to stderr, quietly.
        logs.setup("warning", "console" if sys.stderr.isatty() else "json")
    try:
        return args.func(args)
    except BrokenPipeError:  # e.g. `gateway export | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        return EXIT_FAIL
    except UserError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except Exception as exc:
        import sqlalchemy.exc

        if not isinstance(exc, sqlalchemy.exc.SQLAlchemyError):
            raise
        # E.g. the server is down or refuses us: named, not a traceback.
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        print(f"gateway: database: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
