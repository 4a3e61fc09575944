"""`token create|list|revoke`: bearer tokens of the CRM's HTTP API (gateway/api/).

A token belongs to one organisation; bound to a user (--user) it sees what that user
may see (SPEC 2.12 sharing), otherwise everything of the organisation.  The token is
printed once at creation; only its hash is stored.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_OK, open_readonly, open_readwrite, print_json
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _token(args: argparse.Namespace) -> int:
    from gateway.views import ts
    from gateway.store import tokens

    if args.token_command == "list":
        _, engine = open_readonly(args)
        with engine.connect() as conn:
            rows = [{"id": r.id, "name": r.name, "org": r.org_id, "user": r.user, "scope": r.scope,
                     "created_at": ts(r.created_at), "revoked_at": ts(r.revoked_at)}
                    for r in tokens.listing(conn, args.org)]
        if args.json:
            print_json(rows)
        else:
            print(render_listing(rows))
        return EXIT_OK
    _, database, index = open_readwrite(args)
    if args.token_command == "revoke":
        if not database.writing(tokens.revoke, args.id):
            raise UserError(f"no live token {args.id} (see `gateway token list --org ORG`)")
        print(f"token {args.id} revoked")
        return EXIT_OK
    org = index.orgs.get(args.org)
    if org is None:
        raise UserError(f"no organisation {args.org} in the rules")
    user_id = None
    if args.user:
        user = org.users.get(args.user.strip().lower())
        if user is None or user.id is None:
            raise UserError(f"no user {args.user} in {org.id}")
        user_id = user.id
    name = args.name.strip()
    if not name or len(name) > 100:
        raise UserError("--name must be 1 to 100 characters")
    token_id, token = database.writing(tokens.create, org.id, name, args.scope, user_id)
    created = {"id": token_id, "name": name, "org": org.id, "user": args.user.strip().lower() if args.user else None,
               "scope": args.scope, "token": token}
    if args.json:
        print_json(created)
    else:
        print(f"token {token_id} ({name}, {args.scope}) for {org.id}"
              + (f" as {created['user']}" if created["user"] else "") + " -- shown once, keep it secret:")
        print(token)
    return EXIT_OK


def render_listing(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no tokens"
    return "\n".join(f"{r['id']:>5}  {r['name']}  {r['scope']}  {r['user'] or '(organisation)'}  "
                     f"created {r['created_at']}" + (f"  REVOKED {r['revoked_at']}" if r["revoked_at"] else "")
                     for r in rows)


def _add_token(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("token", help="bearer tokens of the CRM's HTTP API")
    tsub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    q = tsub.add_parser("create", parents=[common], help="create a token and print it (once)")
    q.add_argument("--org", required=True, help="the organisation it belongs to")
    q.add_argument("--name", required=True, help="what it is for (shown in lists and in record histories)")
    q.add_argument("--user", help="see only what this user may see (sharing); default: the whole organisation")
    q.add_argument("--scope", choices=("read", "write"), default="read", help="read (default) or write")
    q.add_argument("--json", action="store_true", help='print {"id", "name", "org", "user", "scope", "token"}')
    q.set_defaults(func=_token)
    q = tsub.add_parser("list", parents=[common], help="the organisation's tokens (never the tokens themselves)")
    q.add_argument("--org", required=True, help="the organisation")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=_token)
    q = tsub.add_parser("revoke", parents=[common], help="revoke a token at once")
    q.add_argument("id", type=int, metavar="ID")
    q.set_defaults(func=_token)


PARSERS: dict[str, AddParser] = {"token": _add_token}
