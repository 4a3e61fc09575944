"""`import contacts|leads FILE --org ORG`: the CRM's people from a CSV or JSON-lines file.

The same core as the API's import (gateway/people_import.py): every row validated,
written in batches of 500 with set-based statements, a transaction per batch; the
rejected rows (bad address, missing email, unknown owner, duplicate in file...) are
listed by line number and make the exit status 1; a re-run finds every row
unchanged.  --dry-run runs the same statements in transactions that are rolled back
(on a connection that refuses to commit), after reading the schema and the rules'
ids read-only, as `gateway explain` does: nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.cli.common import EXIT_FAIL, EXIT_OK, open_readonly, open_readwrite, print_json, rules
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers
    from gateway.people_import import ImportReport


class _Progress:
    """A bar on stderr while rows are written (by file line) -- only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30):
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.on = stream.isatty()
        self._shown = 0.0

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not final and now - self._shown < 0.1):
            return
        self._shown = now
        filled = self.width * min(done, self.total) // self.total
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] line {done:,} of {self.total:,}")
        self.stream.flush()

    def close(self) -> None:
        if self.on and self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _import(args: argparse.Namespace) -> int:
    from gateway.people_import import Importer, RowError, read_file

    kind = "contact" if args.kind == "contacts" else "lead"
    parsed, ignored = read_file(args.file)
    if ignored:
        print(f"gateway: ignoring columns {', '.join(ignored)} (read: email, first_name, last_name, external_id, "
              "owner)", file=sys.stderr)
    database, index = _open(args)
    try:
        org = index.orgs.get(args.org)
        if org is None:
            raise UserError(f"no organisation {args.org} in the rules")
        try:
            importer = Importer(org, kind, source="import", default_owner=args.owner)  # type: ignore[arg-type]
        except RowError as exc:
            raise UserError(f"--owner: {exc}") from None
        progress = _Progress(parsed[-1][0] if parsed else 0)
        try:
            for batch in importer.batches(parsed):
                if args.dry_run:
                    with database.rolled_back() as conn:
                        results = importer.write(conn, batch)
                else:
                    results = database.writing(importer.write, batch)
                importer.record(batch, results)
                progress.show(batch[-1][0])
            progress.show(progress.total, final=True)
        finally:
            progress.close()
    finally:
        database.dispose()
    report = importer.report
    if args.json:
        print_json({**report.as_json(), "ignored_columns": ignored, "dry_run": args.dry_run})
    else:
        print(render(report, args.kind, org.id, str(args.file), args.dry_run))
    return EXIT_FAIL if report.errors else EXIT_OK


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    """(database, rules with ids): read-write; for --dry-run an engine that refuses
    to commit, and the rules' ids read without writing them."""
    from gateway.store import db

    if not args.dry_run:
        _, database, index = open_readwrite(args)
        return database, index
    from gateway.store.readonly import bind_rules

    s, readonly = open_readonly(args)
    bound = bind_rules(readonly, rules(s))
    readonly.dispose()
    if f"organisation {args.org}" in bound.unknown:
        raise UserError(f"organisation {args.org} is not in the database yet: run `gateway db upgrade` "
                        "(or start the gateway) first")
    database = db.Database(db.make_dry_run_engine(s.database_url, s.database.timeout_seconds),
                           s.database.timeout_seconds)
    return database, bound.index


def render(report: ImportReport, kinds: str, org_id: str, source: str, dry_run: bool) -> str:
    lines = [("dry run, nothing written: " if dry_run else "")
             + f"{kinds} of {org_id} from {source}: {report.created:,} created, {report.updated:,} updated, "
               f"{report.unchanged:,} unchanged, {len(report.errors):,} rejected"]
    lines += [f"  line {line}: {why}" for line, why in sorted(report.errors)]
    return "\n".join(lines)


def _add_import(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("import", parents=[common],
                       help="create or update contacts or leads from a CSV or JSON-lines file")
    p.add_argument("kind", choices=("contacts", "leads"), help="what the rows are")
    p.add_argument("file", type=Path, metavar="FILE",
                   help=".csv with a header row (columns email, first_name, last_name, external_id, owner; others "
                        "are ignored) or .jsonl (one JSON object per line, as the API takes it)")
    p.add_argument("--org", required=True, help="the organisation")
    p.add_argument("--owner", metavar="EMAIL", help="owner of the rows that name none (a user of the organisation)")
    p.add_argument("--dry-run", action="store_true", help="check and count, write nothing")
    p.add_argument("--json", action="store_true",
                   help='print {"created", "updated", "unchanged", "errors": [{"line", "error"}], ...}')
    p.set_defaults(func=_import)


PARSERS: dict[str, AddParser] = {"import": _add_import}
