"""What is stored: `record show|stage`, `export`, `email raw|attachment`.

All but `record stage` only look and open the database read-only; `record stage`
moves a record and opens it read-write.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli.common import EXIT_OK, open_readonly, open_readwrite, print_json, rules
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers


def _record(args: argparse.Namespace) -> int:
    from gateway import records

    if args.record_command == "stage":
        _, database, index = open_readwrite(args)
        result = database.writing(records.move, index, args.id, args.stage)
        if args.json:
            print_json(result)
        else:
            print(records.render_move(result))
        return EXIT_OK
    s, engine = open_readonly(args)
    shown = records.show(engine, rules(s), args.id)
    if shown is None:
        raise UserError(f"no record {args.id}")
    if args.json:
        print_json(shown)
    else:
        print(records.render_show(shown))
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from gateway.export import export

    _, engine = open_readonly(args)
    print_json(export(engine, args.org))
    return EXIT_OK


def _stored_raw(args: argparse.Namespace) -> bytes:
    """The raw message ``args.id`` (of ``args.org``, when given)."""
    from gateway.store import emails

    _, engine = open_readonly(args)
    with engine.connect() as conn:
        raw = emails.raw(conn, args.id, args.org)
    if raw is None:
        raise UserError(f"no email {args.id}")
    return raw


def _email_raw(args: argparse.Namespace) -> int:
    raw = _stored_raw(args)
    sys.stdout.buffer.write(raw)
    sys.stdout.buffer.flush()
    return EXIT_OK


def _email_attachment(args: argparse.Namespace) -> int:
    from gateway.errors import MalformedMessage
    from gateway.parse import attachment

    raw = _stored_raw(args)
    try:
        found = attachment(raw, args.index)
    except MalformedMessage as exc:
        found = None
        print(f"gateway: email {args.id} cannot be parsed: {exc.detail}", file=sys.stderr)
    if found is None:
        raise UserError(f"email {args.id} has no attachment {args.index} (they count from 0, in the order "
                        "`gateway export` lists them)")
    info, data = found
    if args.output:
        Path(args.output).write_bytes(data)
        print(f"{args.output}: {info.filename or '(no name)'} {info.content_type} {len(data)} bytes", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def _add_record(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("record", help="pipeline records")
    rsub = p.add_subparsers(dest="record_command", required=True, metavar="ACTION")
    q = rsub.add_parser("show", parents=[common], help="a record: stage, contact, conversation, history, decisions")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--json", action="store_true", help="print the record as JSON")
    q.set_defaults(func=_record)
    q = rsub.add_parser("stage", parents=[common], help="move a record to a stage of its pipeline")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("stage", metavar="STAGE")
    q.add_argument("--json", action="store_true", help="print {id, from, to, changed} as JSON")
    q.set_defaults(func=_record)


def _add_export(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common], help="print stored leads, contacts, records and emails as JSON")
    p.add_argument("--org", help="only this organisation")
    p.set_defaults(func=_export)


def _add_email(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("email", help="stored messages")
    esub = p.add_subparsers(dest="email_command", required=True, metavar="ACTION")
    q = esub.add_parser("raw", parents=[common], help="print a stored message exactly as received")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("--org", help="only if it belongs to this organisation")
    q.set_defaults(func=_email_raw)
    q = esub.add_parser("attachment", parents=[common],
                        help="print the decoded bytes of a stored message's attachment (a calendar invitation...)")
    q.add_argument("id", type=int, metavar="ID")
    q.add_argument("index", type=int, metavar="N", help="which attachment, from 0, as `gateway export` lists them")
    q.add_argument("--org", help="only if it belongs to this organisation")
    q.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    q.set_defaults(func=_email_attachment)


PARSERS: dict[str, AddParser] = {"record": _add_record, "export": _add_export, "email": _add_email}
