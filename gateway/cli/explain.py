"""`explain`: what the gateway would do with a message, per recipient.

It reads the schema and the rules' ids read-only, then runs the real filing code
in transactions that are rolled back (gateway.explain); nothing is stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readonly, print_json, rules
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain, render
    from gateway.filing.policies import Limits
    from gateway.store import db
    from gateway.store.readonly import bind_rules

    try:
        raw = sys.stdin.buffer.read() if str(args.message) == "-" else Path(args.message).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {args.message}: {exc.strerror}") from exc
    s, readonly = open_readonly(args)
    bound = bind_rules(readonly, rules(s))
    readonly.dispose()
    if bound.unknown:
        print("gateway: warning: not in the database yet (the gateway adds them when it loads these rules): "
              + ", ".join(bound.unknown), file=sys.stderr)
    # The filers run for real, in transactions that are rolled back.
    database = db.Database(db.make_dry_run_engine(s.database_url, s.database.timeout_seconds),
                           s.database.timeout_seconds)
    try:
        report = explain(database, bound.index, raw, args.rcpt, args.sender or "", s.trust, Limits.of(s))
    finally:
        database.dispose()
    if args.json:
        print_json(report)
    else:
        print(render(report))
    return EXIT_OK


def _add_explain(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("explain", parents=[common],
                       help="tell what the gateway would do with a message, per recipient; writes nothing")
    p.add_argument("message", metavar="MESSAGE.eml", help="the message file (- for standard input)")
    p.add_argument("--rcpt", action="append", required=True, metavar="ADDR", help="an envelope recipient (repeatable)")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="the envelope sender (default: the null sender <>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_explain)


PARSERS: dict[str, AddParser] = {"explain": _add_explain}
