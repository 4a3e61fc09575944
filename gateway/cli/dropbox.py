"""Addresses the gateway accepts: `dropbox address|regenerate|vcard` (a user's BCC
dropbox) and `postfix-maps` (every valid recipient, for Postfix).

Both change something (a dropbox token is made on first use; regenerate replaces it
and rewrites the Postfix map), so they open the database read-write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readwrite, print_json, settings
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers
    from gateway.rules.index import RuleIndex, UserEntry


def _dropbox_user(index: RuleIndex, email: str) -> UserEntry:
    from gateway.addresses import normalise

    email = normalise(email)
    matches = [o.users[email] for o in index.orgs.values() if email in o.users]
    if not matches:
        raise UserError(f"no user {email} in the rules")
    user = matches[0]
    if not user.may_use_dropbox:
        raise UserError(f"{email} has no dropbox: their role {user.role!r} lacks the permission (or the user is inactive)")
    return user


def _dropbox(args: argparse.Namespace) -> int:
    from gateway.routing import dropbox_address
    from gateway.store import dropboxes

    _, database, index = open_readwrite(args)
    user = _dropbox_user(index, args.user)
    org = index.orgs[user.org_id]
    if args.dropbox_command == "regenerate":
        token = database.writing(dropboxes.regenerate, org.id, user.id)
        from gateway.app import write_postfix_map

        write_postfix_map(settings(args), database.engine, index)  # the old address leaves Postfix's map too
    else:
        token = database.writing(dropboxes.token, org.id, user.id)
    address = dropbox_address(token, org.gateway_domain)
    if args.dropbox_command == "vcard":
        from gateway.dropboxes import vcard

        sys.stdout.write(vcard(user, org, address))
    elif getattr(args, "json", False):
        print_json({"user": user.email, "org": org.id, "address": address})
    else:
        print(address)
    return EXIT_OK


def _postfix_maps(args: argparse.Namespace) -> int:
    from gateway.postfix import recipients, render, write_map

    s, database, index = open_readwrite(args)
    target = args.output or (str(s.path(s.postfix.recipient_map)) if s.postfix.recipient_map else "-")
    if target == "-":
        sys.stdout.write(render(recipients(database.engine, index)))
        return EXIT_OK
    count = write_map(Path(target), database.engine, index, s.postfix.postmap_command)
    print(f"wrote {count} addresses to {target}", file=sys.stderr)
    return EXIT_OK


def _add_dropbox(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dropbox", help="a user's BCC dropbox address")
    dsub = p.add_subparsers(dest="dropbox_command", required=True, metavar="ACTION")
    for name, text in (("address", "print the user's dropbox address"),
                       ("regenerate", "make a new address; the old one stops working at once"),
                       ("vcard", "print the address as a vCard (.vcf) for an address book")):
        q = dsub.add_parser(name, parents=[common], help=text)
        q.add_argument("user", metavar="USER_EMAIL")
        if name != "vcard":
            q.add_argument("--json", action="store_true", help="print {user, org, address} as JSON")
        q.set_defaults(func=_dropbox)


def _add_postfix_maps(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("postfix-maps", parents=[common],
                       help="write the valid recipients (aliases, live dropboxes) as a Postfix map")
    p.add_argument("--output", metavar="FILE", help="where to write (default: postfix.recipient_map, else stdout; - for stdout)")
    p.set_defaults(func=_postfix_maps)


PARSERS: dict[str, AddParser] = {"dropbox": _add_dropbox, "postfix-maps": _add_postfix_maps}
