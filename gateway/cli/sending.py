"""Outbound mail and the submission listener: `dkim keygen|dns` (signing keys and
their DNS records), `quota status` (the daily sending quota, read-only) and
`passwd` (the scrypt hash of a submission password, for the rules).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readonly, print_json, rules, settings
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers
    from gateway.rules.index import DkimEntry, OrgEntry, RuleIndex


def _dkim_entry(index: RuleIndex, domain: str) -> tuple[OrgEntry, DkimEntry]:
    domain = domain.strip().lower().rstrip(".")
    for org in index.orgs.values():
        if domain in org.dkim:
            return org, org.dkim[domain]
    raise UserError(f"no [[dkim]] entry for {domain} in the rules: add domain, selector and key_file first")


def _dkim(args: argparse.Namespace) -> int:
    from gateway import signing

    index = rules(settings(args))
    if args.dkim_command == "keygen" and args.out:
        path, domain, selector = Path(args.out), args.domain, args.selector
    else:
        _, entry = _dkim_entry(index, args.domain)
        path, domain, selector = entry.key_path, entry.domain, entry.selector
        if args.dkim_command == "keygen" and args.selector != entry.selector:
            raise UserError(f"the rules name selector {entry.selector!r} for {domain}, not {args.selector!r}: "
                            "change the rules first, or write elsewhere with --out")
    try:
        if args.dkim_command == "keygen":
            pem = signing.generate_key(path, bits=args.bits, overwrite=args.force)
            print(f"wrote {path} (RSA {args.bits}, mode 0600); publish this DNS record:", file=sys.stderr)
        else:
            pem = signing.load_key(path)
    except signing.DkimKeyError as exc:
        raise UserError(str(exc)) from exc
    if getattr(args, "json", False):
        print_json({"domain": domain, "selector": selector, "name": f"{selector}._domainkey.{domain}",
                    "type": "TXT", "value": signing.txt_record(pem), "key_file": str(path)})
    else:
        print(signing.dns_line(domain, selector, pem))
    return EXIT_OK


def _quota(args: argparse.Namespace) -> int:
    from gateway import quota

    s, engine = open_readonly(args)
    index = rules(s)
    if args.org and args.org not in index.orgs:
        raise UserError(f"no organisation {args.org}")
    orgs = [index.orgs[args.org]] if args.org else list(index.orgs.values())
    report = [quota.status(engine, org) for org in orgs]
    if args.json:
        print_json(report if not args.org else report[0])
        return EXIT_OK
    text = quota.render_status(report)
    if text:
        print(text)
    return EXIT_OK


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    from gateway.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise UserError("empty password")
    print(hash_password(password))
    return EXIT_OK


def _add_dkim(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("dkim", help="DKIM keys of sending domains")
    ksub = p.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    q = ksub.add_parser("keygen", parents=[common], help="write a new key to the file the rules name; print the DNS TXT record")
    q.add_argument("domain", metavar="DOMAIN")
    q.add_argument("--selector", required=True, help="the selector (must match the rules)")
    q.add_argument("--bits", type=int, default=2048, choices=(1024, 2048, 3072, 4096))
    q.add_argument("--force", action="store_true", help="replace an existing key")
    q.add_argument("--out", help="write here instead of the rules' key_file")
    q.add_argument("--json", action="store_true", help="print {domain, selector, name, type, value, key_file}")
    q.set_defaults(func=_dkim)
    q = ksub.add_parser("dns", parents=[common], help="print the DNS TXT record of a domain's key again")
    q.add_argument("domain", metavar="DOMAIN")
    q.add_argument("--json", action="store_true", help="print {domain, selector, name, type, value, key_file}")
    q.set_defaults(func=_dkim)


def _add_quota(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("quota", help="daily sending quota")
    qsub = p.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    q = qsub.add_parser("status", parents=[common], help="per class: limit, used, remaining, next reset")
    q.add_argument("--org", help="only this organisation")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=_quota)


def _add_passwd(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("passwd", parents=[common], help="read a password (stdin or prompt) and print its scrypt hash for the rules")
    p.set_defaults(func=_passwd)


PARSERS: dict[str, AddParser] = {"dkim": _add_dkim, "quota": _add_quota, "passwd": _add_passwd}
