"""The `gateway` command: serve, check, db, dropbox, export, email.

Commands that only look -- export, record show, quota status, email raw, email attachment, explain,
check, quarantine list -- open the database read-only (store.db.make_readonly_engine):
they never migrate the schema and never write the rules into the database (issue 11:
`gateway export -c other.toml` used to deactivate the organisations other.toml lacks).
Only serve, db upgrade, reload and the commands that exist to change something write.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from gateway import __version__
from gateway.errors import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway import settings

    return settings.load(args.config)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway import app, logs
    from gateway.validation import check_configuration

    # The files the configuration names, opened before anything starts: a bad
    # certificate or DKIM key is named here, not met as a traceback or a 451 later.
    report = check_configuration(args.config, database=False)
    for problem in report.errors:
        print(f"gateway: {problem}", file=sys.stderr)
    if not report.ok:
        return EXIT_FAIL
    assert report.settings is not None
    s = report.settings
    logs.setup(s.logging.level, s.logging.format)
    for problem in report.warnings:
        logs.get("gateway.check").warning("config_warning", file=problem.file, key=problem.key, line=problem.line,
                                          problem=problem.message)
    return app.run(s)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.validation import check_configuration, problem_json, safe_url

    report = check_configuration(args.config)
    if args.strict:
        report.strict()
    doc: dict[str, Any] = {"ok": report.ok, "errors": [problem_json(p) for p in report.errors],
                           "warnings": [problem_json(p) for p in report.warnings]}
    s, index = report.settings, report.rules
    if s is not None:
        doc["config"] = str(args.config)
        doc["database"] = report.database or {"url": safe_url(s.database_url)}
    if index is not None:
        doc["rules"] = list(index.files)
        doc["organisations"] = {
            o.id: {"users": len(o.users), "pipelines": len(o.pipelines),
                   "aliases": sorted(a.address for a in index.aliases.values() if a.org_id == o.id)}
            for o in index.orgs.values()
        }
    if args.json:
        _print_json(doc)
        return EXIT_OK if report.ok else EXIT_FAIL
    for problem in report.errors:
        print(f"gateway: {problem}", file=sys.stderr)
    for problem in report.warnings:
        print(f"gateway: warning: {problem}", file=sys.stderr)
    if not report.ok:
        return EXIT_FAIL
    assert index is not None
    warned = f"; {len(report.warnings)} warning{'s' if len(report.warnings) != 1 else ''}" if report.warnings else ""
    print(f"{args.config}: OK ({len(index.files)} rule files, {len(index.orgs)} organisations{warned})")
    return EXIT_OK


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """For commands that change something: migrate, sync the rules, return ids."""
    from gateway.app import load_and_sync, open_database

    s = _settings(args)
    engine = open_database(s)
    return s, engine, load_and_sync(s, engine)


def _open_readonly(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """For commands that only look: a read-only engine on a schema at our revision
    (else exit 1 telling to run `gateway db upgrade`); nothing is migrated or synced."""
    from gateway.store import db

    s = _settings(args)
    engine = db.make_readonly_engine(s.database_url, s.database.timeout_seconds)
    db.require_current_schema(engine)
    return s, engine


def _rules(s):  # type: ignore[no-untyped-def]
    from gateway.rules.loader import load_rules

    return load_rules(s.rules_dir)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from gateway.store import db

    s = _settings(args)
    engine = db.make_engine(s.database_url, s.database.timeout_seconds)
    applied = db.upgrade(engine)
    print(f"database at revision {db.current_revision(engine)}" + (f" (applied {', '.join(applied)})" if applied else " (already up to date)"))
    return EXIT_OK


def _dropbox_user(index, email: str):  # type: ignore[no-untyped-def]
    from gateway.addresses import normalise

    email = normalise(email)
    matches = [o.users[email] for o in index.orgs.values() if email in o.users]
    if not matches:
        raise LookupError(f"no user {email} in the rules")
    user = matches[0]
    if not user.may_use_dropbox:
        raise LookupError(f"{email} has no dropbox: their role {user.role!r} lacks the permission (or the user is inactive)")
    return user


def cmd_dropbox(args: argparse.Namespace) -> int:
    from gateway.routing import dropbox_address
    from gateway.store import repo

    _, engine, index = _open(args)
    user = _dropbox_user(index, args.user)
    org = index.orgs[user.org_id]
    if args.dropbox_command == "regenerate":
        token = repo.regenerate_dropbox(engine, org.id, user.id)
        from gateway.app import write_postfix_map

        write_postfix_map(_settings(args), engine, index)  # the old address leaves Postfix's map too
    else:
        token = repo.dropbox_token(engine, org.id, user.id)
    address = dropbox_address(token, org.gateway_domain)
    if args.dropbox_command == "vcard":
        sys.stdout.write(_vcard(user, org, address))
    elif getattr(args, "json", False):
        _print_json({"user": user.email, "org": org.id, "address": address})
    else:
        print(address)
    return EXIT_OK


def _vcard(user, org, address: str) -> str:  # type: ignore[no-untyped-def]
    import vobject

    card = vobject.vCard()
    card.add("n").value = vobject.vcard.Name(family="Dropbox", given=(f"{user.first_name} {user.last_name}").strip())
    card.add("fn").value = f"CRM dropbox ({user.email})"
    card.add("org").value = [org.name]
    email = card.add("email")
    email.value = address
    email.type_param = "INTERNET"
    card.add("note").value = f"Put this address in Bcc to file the mail in the CRM ({org.name})."
    return card.serialize()


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.export import export

    _, engine = _open_readonly(args)
    _print_json(export(engine, args.org))
    return EXIT_OK


def _stored_raw(args: argparse.Namespace) -> bytes | None:
    """The raw message ``args.id`` (of ``args.org``, when given), or None after saying so."""
    from gateway.store import repo

    _, engine = _open_readonly(args)
    raw = repo.raw_email(engine, args.id, args.org)
    if raw is None:
        print(f"gateway: no email {args.id}", file=sys.stderr)
    return raw


def cmd_email_raw(args: argparse.Namespace) -> int:
    raw = _stored_raw(args)
    if raw is None:
        return EXIT_FAIL
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_email_attachment(args: argparse.Namespace) -> int:
    from gateway.errors import MalformedMessage
    from gateway.ingest.parse import attachment

    raw = _stored_raw(args)
    if raw is None:
        return EXIT_FAIL
    try:
        found = attachment(raw, args.index)
    except MalformedMessage as exc:
        found = None
        print(f"gateway: email {args.id} cannot be parsed: {exc.detail}", file=sys.stderr)
    if found is None:
        print(f"gateway: email {args.id} has no attachment {args.index} (they count from 0, in the order "
              "`gateway export` lists them)", file=sys.stderr)
        return EXIT_FAIL
    info, data = found
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"{args.output}: {info.filename or '(no name)'} {info.content_type} {len(data)} bytes", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    from gateway import records

    if args.record_command == "stage":
        _, engine, index = _open(args)
        result = records.move(engine, index, args.id, args.stage)
        if args.json:
            _print_json(result)
        elif result["changed"]:
            print(f"record {args.id}: {result['from']} -> {result['to']}")
        else:
            print(f"record {args.id} is already in {args.stage}")
        return EXIT_OK
    s, engine = _open_readonly(args)
    shown = records.show(engine, _rules(s), args.id)
    if shown is None:
        raise LookupError(f"no record {args.id}")
    if args.json:
        _print_json(shown)
        return EXIT_OK
    contact = shown["contact"]
    print(f"Record {shown['id']} {shown['token'] or ''}  [{shown['org']}]  {shown['title']}")
    print(f"  pipeline: {shown['pipeline']}   stage: {shown['stage']}   owner: {shown['owner']}")
    print(f"  tags: {', '.join(shown['tags']) or '-'}")
    if contact:
        name = " ".join(x for x in (contact["first_name"], contact["last_name"]) if x)
        print(f"  contact: {contact['id']} {name} <{contact['email']}>")
    print("  conversation:")
    for e in shown["conversation"]:
        mark = "" if e["kind"] == "message" else f" [{e['kind']}]"
        arrow = "<-" if e["direction"] == "inbound" else "->"
        print(f"    {e['sort_at']}  {arrow} {e['from']}  {e['subject']}{mark}  (email {e['id']})")
    print("  stage history:")
    for h in shown["stage_history"]:
        print(f"    {h['at']}  {h['from'] or '-'} -> {h['to']}  ({h['cause']})")
    print("  decisions:")
    for d in shown["decisions"]:
        thread = d.get("thread") or {}
        change = d.get("stage_change")
        parts = [f"email {d['email_id']}", "sent" if d.get("route") == "relay" else "received",
                 f"thread={thread.get('method', '-')}"]
        if thread.get("evidence"):
            parts.append(f"by {thread['evidence']}")
        if d.get("contact"):
            parts.append(f"contact {d['contact']['action']}")
        if d.get("noise"):
            parts.append(f"noise={d['noise']}")
        if change:
            parts.append(f"stage {change['from'] or '-'} -> {change['to']}")
        if d.get("token_added"):
            parts.append("token added to subject")
        print("    " + ", ".join(parts))
    return EXIT_OK


def _dkim_entry(index, domain: str):  # type: ignore[no-untyped-def]
    domain = domain.strip().lower().rstrip(".")
    for org in index.orgs.values():
        if domain in org.dkim:
            return org, org.dkim[domain]
    raise LookupError(f"no [[dkim]] entry for {domain} in the rules: add domain, selector and key_file first")


def cmd_dkim(args: argparse.Namespace) -> int:
    from gateway import signing
    from gateway.rules.loader import load_rules

    s = _settings(args)
    index = load_rules(s.rules_dir)
    if args.dkim_command == "keygen" and args.out:
        path, domain, selector = Path(args.out), args.domain, args.selector
    else:
        org, entry = _dkim_entry(index, args.domain)
        path, domain, selector = entry.key_path, entry.domain, entry.selector
        if args.dkim_command == "keygen" and args.selector != entry.selector:
            raise LookupError(f"the rules name selector {entry.selector!r} for {domain}, not {args.selector!r}: "
                              "change the rules first, or write elsewhere with --out")
    try:
        if args.dkim_command == "keygen":
            pem = signing.generate_key(path, bits=args.bits, overwrite=args.force)
            print(f"wrote {path} (RSA {args.bits}, mode 0600); publish this DNS record:", file=sys.stderr)
        else:
            pem = signing.load_key(path)
    except signing.DkimKeyError as exc:
        raise LookupError(str(exc)) from exc
    if getattr(args, "json", False):
        _print_json({"domain": domain, "selector": selector, "name": f"{selector}._domainkey.{domain}",
                     "type": "TXT", "value": signing.txt_record(pem), "key_file": str(path)})
    else:
        print(signing.dns_line(domain, selector, pem))
    return EXIT_OK


def cmd_quota(args: argparse.Namespace) -> int:
    from gateway import quota

    s, engine = _open_readonly(args)
    index = _rules(s)
    orgs = [index.orgs[args.org]] if args.org else list(index.orgs.values())
    if args.org and args.org not in index.orgs:
        raise LookupError(f"no organisation {args.org}")
    report = [quota.status(engine, org) for org in orgs]
    if args.json:
        _print_json(report if not args.org else report[0])
        return EXIT_OK
    for r in report:
        print(f"{r['org']}  ({r['plan']}, {r['edition']}, {r['active_users']} active users, {r['timezone']})")
        print(f"  day {r['day']}; next reset {r['next_reset_local']} local = {r['next_reset_utc']}")
        for name, c in r["classes"].items():
            print(f"  {name:<11} limit {c['limit']:>6}  used {c['used']:>6}  remaining {c['remaining']:>6}")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    import getpass

    from gateway.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("gateway: the passwords differ", file=sys.stderr)
            return EXIT_FAIL
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("gateway: empty password", file=sys.stderr)
        return EXIT_FAIL
    print(hash_password(password))
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    import signal

    from gateway.rules.loader import load_rules

    s = _settings(args)
    load_rules(s.rules_dir)  # refuse to signal a reload that would fail (errors name file:line)
    pid_file = s.path(s.server.pid_file)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise LookupError(f"no running gateway found through {pid_file}: {exc}") from exc
    if args.json:
        _print_json({"ok": True, "pid": pid, "rules": "valid"})
    else:
        print(f"rules valid; reload signalled to gateway pid {pid}")
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain, render
    from gateway.store import db
    from gateway.store.readonly import bind_rules

    try:
        raw = sys.stdin.buffer.read() if str(args.message) == "-" else Path(args.message).read_bytes()
    except OSError as exc:
        raise LookupError(f"cannot read {args.message}: {exc.strerror}") from exc
    s, readonly = _open_readonly(args)
    bound = bind_rules(readonly, _rules(s))
    readonly.dispose()
    if bound.unknown:
        print("gateway: warning: not in the database yet (the gateway adds them when it loads these rules): "
              + ", ".join(bound.unknown), file=sys.stderr)
    # The filers run for real, in transactions that are rolled back.
    engine = db.make_dry_run_engine(s.database_url, s.database.timeout_seconds)
    try:
        report = explain(engine, bound.index, raw, args.rcpt, args.sender or "")
    finally:
        engine.dispose()
    if args.json:
        _print_json(report)
    else:
        print(render(report))
    return EXIT_OK


def cmd_postfix_maps(args: argparse.Namespace) -> int:
    from gateway.postfix import recipients, render, write_map

    s, engine, index = _open(args)
    target = args.output or (str(s.path(s.postfix.recipient_map)) if s.postfix.recipient_map else "-")
    if target == "-":
        sys.stdout.write(render(recipients(engine, index)))
        return EXIT_OK
    count = write_map(Path(target), engine, index, s.postfix.postmap_command)
    print(f"wrote {count} addresses to {target}", file=sys.stderr)
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from gateway import quarantine
    from gateway.delivery import Gateway
    from gateway.workers import WorkerPool

    if args.quarantine_command == "list":
        _, engine = _open_readonly(args)
        rows = quarantine.listing(engine, args.org)
        if args.json:
            _print_json(rows)
        elif not rows:
            print("quarantine is empty")
        for r in rows if not args.json else []:
            state = f"replayed {r['replayed_at']} as email {r['email_id']}" if r["replayed_at"] else "waiting"
            print(f"{r['id']:>5}  {r['created_at']}  {r['org']}  {r['recipient']}  {r['message_key'][:60]}  "
                  f"attempts {r['attempts']}  {state}\n       error: {r['error'][:200]}")
        return EXIT_OK
    _, engine, index = _open(args)
    pool = WorkerPool(1, 1)
    try:
        result = quarantine.replay(engine, index, Gateway(engine, index, pool), args.id)
    finally:
        pool.shutdown()
    if args.json:
        _print_json(result)
    else:
        what = "already filed before" if result["duplicate"] else (
            "dropped (noise)" if result["dropped"] else f"filed as email {result['email_id']}")
        print(f"quarantined message {args.id}: {what}")
    return EXIT_OK


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

    p = sub.add_parser("serve", parents=[common], help="run the daemon (LMTP and SMTP listeners)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", parents=[common],
                       help="validate gateway.toml, rules/ and the files they name (keys, certificates), and the "
                            "database schema, without starting or writing; exit 0 or 1")
    p.add_argument("--json", action="store_true", help="print {ok, errors, warnings, ...} as JSON (always)")
    p.add_argument("--strict", action="store_true", help="warnings (e.g. a missing DKIM key) are errors")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    q = dbsub.add_parser("upgrade", parents=[common], help="bring the schema to the newest revision")
    q.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("dropbox", help="a user's BCC dropbox address")
    dsub = p.add_subparsers(dest="dropbox_command", required=True, metavar="ACTION")
    for name, text in (("address", "print the user's dropbox address"),
                       ("regenerate", "make a new address; the old one stops working at once"),
                       ("vcard", "print the address as a vCard (.vcf) for an address book")):
        q = dsub.add_parser(name, parents=[common], help=text)
        q.add_argument("user", metavar="USER_EMAIL")
        if name != "vcard":
            q.add_argument("--json", action="store_true", help="print {user, org, address} as JSON")
        q.set_defaults(func=cmd_dropbox)

    p = sub.add_parser("record", help="pipeline records")
    rsub = p.add_subparsers(dest="record_command", required=True, metavar="ACTION")
    q = rsub.add_parser("show", parents=[common], help="a record: stage, contact, conversation, history, decisions")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--json", action="store_true", help="print the record as JSON")
    q.set_defaults(func=cmd_record)
    q = rsub.add_parser("stage", parents=[common], help="move a record to a stage of its pipeline")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("stage", metavar="STAGE")
    q.add_argument("--json", action="store_true", help="print {id, from, to, changed} as JSON")
    q.set_defaults(func=cmd_record)

    p = sub.add_parser("dkim", help="DKIM keys of sending domains")
    ksub = p.add_subparsers(dest="dkim_command", required=True, metavar="ACTION")
    q = ksub.add_parser("keygen", parents=[common], help="write a new key to the file the rules name; print the DNS TXT record")
    q.add_argument("domain", metavar="DOMAIN")
    q.add_argument("--selector", required=True, help="the selector (must match the rules)")
    q.add_argument("--bits", type=int, default=2048, choices=(1024, 2048, 3072, 4096))
    q.add_argument("--force", action="store_true", help="replace an existing key")
    q.add_argument("--out", help="write here instead of the rules' key_file")
    q.add_argument("--json", action="store_true", help="print {domain, selector, name, type, value, key_file}")
    q.set_defaults(func=cmd_dkim)
    q = ksub.add_parser("dns", parents=[common], help="print the DNS TXT record of a domain's key again")
    q.add_argument("domain", metavar="DOMAIN")
    q.add_argument("--json", action="store_true", help="print {domain, selector, name, type, value, key_file}")
    q.set_defaults(func=cmd_dkim)

    p = sub.add_parser("quota", help="daily sending quota")
    qsub = p.add_subparsers(dest="quota_command", required=True, metavar="ACTION")
    q = qsub.add_parser("status", parents=[common], help="per class: limit, used, remaining, next reset")
    q.add_argument("--org", help="only this organisation")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_quota)

    p = sub.add_parser("reload", parents=[common], help="validate rules/ and make the running daemon reload them (SIGHUP)")
    p.add_argument("--json", action="store_true", help="print {ok, pid, rules}")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("explain", parents=[common],
                       help="tell what the gateway would do with a message, per recipient; writes nothing")
    p.add_argument("message", metavar="MESSAGE.eml", help="the message file (- for standard input)")
    p.add_argument("--rcpt", action="append", required=True, metavar="ADDR", help="an envelope recipient (repeatable)")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="the envelope sender (default: the null sender <>)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("postfix-maps", parents=[common],
                       help="write the valid recipients (aliases, live dropboxes) as a Postfix map")
    p.add_argument("--output", metavar="FILE", help="where to write (default: postfix.recipient_map, else stdout; - for stdout)")
    p.set_defaults(func=cmd_postfix_maps)

    p = sub.add_parser("quarantine", help="messages kept after repeated internal errors")
    qsub = p.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    q = qsub.add_parser("list", parents=[common], help="list quarantined messages")
    q.add_argument("--org", help="only this organisation")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=cmd_quarantine)
    q = qsub.add_parser("replay", parents=[common], help="file a quarantined message now (after fixing the cause)")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--json", action="store_true", help="print {id, email_id, duplicate, dropped}")
    q.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("passwd", parents=[common], help="read a password (stdin or prompt) and print its scrypt hash for the rules")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("export", parents=[common], help="print stored leads, contacts, records and emails as JSON")
    p.add_argument("--org", help="only this organisation")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("email", help="stored messages")
    esub = p.add_subparsers(dest="email_command", required=True, metavar="ACTION")
    q = esub.add_parser("raw", parents=[common], help="print a stored message exactly as received")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--org", help="only if it belongs to this organisation")
    q.set_defaults(func=cmd_email_raw)
    q = esub.add_parser("attachment", parents=[common],
                        help="print the decoded bytes of a stored message's attachment (a calendar invitation...)")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("index", type=int, metavar="N", help="which attachment, from 0, as `gateway export` lists them")
    q.add_argument("--org", help="only if it belongs to this organisation")
    q.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    q.set_defaults(func=cmd_email_attachment)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is not cmd_serve:
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
    except LookupError as exc:
        print(f"gateway: {exc.args[0]}", file=sys.stderr)
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
