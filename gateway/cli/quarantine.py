"""`quarantine list|replay`: messages kept aside after repeated internal errors.

`list` only looks (read-only); `replay` files a message through the normal filing
code and opens the database read-write.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readonly, open_readwrite, print_result

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _quarantine(args: argparse.Namespace) -> int:
    from gateway import quarantine
    from gateway.filing.policies import Limits

    if args.quarantine_command == "list":
        _, engine = open_readonly(args)
        rows = quarantine.listing(engine, args.org)
        print_result(args, rows, quarantine.render_listing)
        return EXIT_OK
    s, database, index = open_readwrite(args)
    result = quarantine.replay(database, index, args.id, s.trust, Limits.of(s))
    print_result(args, result, quarantine.render_replay)
    return EXIT_OK


def _add_quarantine(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("quarantine", help="messages kept after repeated internal errors")
    qsub = p.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    q = qsub.add_parser("list", parents=[common], help="list quarantined messages")
    q.add_argument("--org", help="only this organisation")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=_quarantine)
    q = qsub.add_parser("replay", parents=[common], help="file a quarantined message now (after fixing the cause)")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--json", action="store_true", help="print {id, email_id, duplicate, dropped}")
    q.set_defaults(func=_quarantine)


PARSERS: dict[str, AddParser] = {"quarantine": _add_quarantine}
