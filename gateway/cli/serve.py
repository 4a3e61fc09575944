"""The daemon and what surrounds it: `serve`, `check`, `reload`, `db upgrade`.

`check` only looks (the database read-only, as gateway.validation opens it); `serve`
and `db upgrade` migrate the schema; `reload` writes nothing and signals the daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_FAIL, EXIT_OK, print_json, settings
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _serve(args: argparse.Namespace) -> int:
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


def _check(args: argparse.Namespace) -> int:
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
        print_json(doc)
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


def _reload(args: argparse.Namespace) -> int:
    import signal

    from gateway.rules.loader import load_rules

    s = settings(args)
    load_rules(s.rules_dir)  # refuse to signal a reload that would fail (errors name file:line)
    pid_file = s.path(s.server.pid_file)
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        raise UserError(f"no running gateway found through {pid_file}: {exc}") from exc
    if args.json:
        print_json({"ok": True, "pid": pid, "rules": "valid"})
    else:
        print(f"rules valid; reload signalled to gateway pid {pid}")
    return EXIT_OK


def _db_upgrade(args: argparse.Namespace) -> int:
    from gateway.store import db

    s = settings(args)
    engine = db.make_engine(s.database_url, s.database.timeout_seconds)
    applied = db.upgrade(engine)
    print(f"database at revision {db.current_revision(engine)}" + (f" (applied {', '.join(applied)})" if applied else " (already up to date)"))
    return EXIT_OK


def _add_serve(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the daemon (LMTP and SMTP listeners)")
    p.set_defaults(func=_serve)


def _add_check(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common],
                       help="validate gateway.toml, rules/ and the files they name (keys, certificates), and the "
                            "database schema, without starting or writing; exit 0 or 1")
    p.add_argument("--json", action="store_true", help="print {ok, errors, warnings, ...} as JSON (always)")
    p.add_argument("--strict", action="store_true", help="warnings (e.g. a missing DKIM key) are errors")
    p.set_defaults(func=_check)


def _add_db(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("db", help="database schema")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    q = dbsub.add_parser("upgrade", parents=[common], help="bring the schema to the newest revision")
    q.set_defaults(func=_db_upgrade)


def _add_reload(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("reload", parents=[common], help="validate rules/ and make the running daemon reload them (SIGHUP)")
    p.add_argument("--json", action="store_true", help="print {ok, pid, rules}")
    p.set_defaults(func=_reload)


PARSERS: dict[str, AddParser] = {"serve": _add_serve, "check": _add_check, "db": _add_db, "reload": _add_reload}
