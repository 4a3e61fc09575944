"""`review list|show|approve|reject`: mail held for review instead of filed (issue 16).

`list` and `show` only look (read-only); `approve` files the message through the
normal filing code and `reject` keeps it unfiled -- both open the database read-write.
"""

from __future__ import annotations

import argparse
import getpass
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readonly, open_readwrite, print_result

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _reviewer() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _review(args: argparse.Namespace) -> int:
    from gateway import review

    command = args.review_command
    if command in ("list", "show"):
        _, engine = open_readonly(args)
        if command == "list":
            rows = review.listing(engine, args.org, None if args.all else "pending")
            print_result(args, rows, review.render_listing)
            return EXIT_OK
        shown = review.show(engine, args.id)
        if shown is None:
            raise review.ReviewError(f"no held message {args.id}", 404)
        print_result(args, shown, review.render_show)
        return EXIT_OK
    _, database, index = open_readwrite(args)
    if command == "approve":
        done = review.approve(database, index, args.id, _reviewer())
    else:
        done = review.reject(database, args.id, _reviewer(), args.reason)
    print_result(args, done, review.render_decision)
    return EXIT_OK


def _add_review(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("review", help="mail held for review: list, show, approve, reject")
    rsub = p.add_subparsers(dest="review_command", required=True, metavar="ACTION")
    r = rsub.add_parser("list", parents=[common], help="the messages waiting for review (--all: decided ones too)")
    r.add_argument("--org", help="only this organisation")
    r.add_argument("--all", action="store_true", help="approved and rejected ones too (until pruned)")
    r.add_argument("--json", action="store_true", help="print as JSON")
    r.set_defaults(func=_review)
    r = rsub.add_parser("show", parents=[common], help="one held message: who, why, its text")
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--json", action="store_true", help="print as JSON")
    r.set_defaults(func=_review)
    r = rsub.add_parser("approve", parents=[common],
                        help="file it now, as a delivery would (idempotent)")
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--json", action="store_true", help="print {id, status, email_id, result}")
    r.set_defaults(func=_review)
    r = rsub.add_parser("reject", parents=[common], help="keep it unfiled (pruned after [review] retention_days)")
    r.add_argument("id", type=int, metavar="ID")
    r.add_argument("--reason", help="why (kept with the decision)")
    r.add_argument("--json", action="store_true", help="print {id, status, email_id, result}")
    r.set_defaults(func=_review)


PARSERS: dict[str, AddParser] = {"review": _add_review}
