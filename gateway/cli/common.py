"""What the command modules share: exit codes, settings and rules loading, opening the
database (read-only for commands that look, migrated and synced for commands that
change something), and printing ``--json`` results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any, Callable, TypeAlias

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.rules.index import RuleIndex
    from gateway.settings import Settings
    from gateway.store.db import Database

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    # What a command module contributes, per top-level command: a function that adds
    # the command's parser (and its actions) to `gateway`'s subparsers, given the
    # parent parser that carries --config.
    AddParser: TypeAlias = Callable[[Subparsers, argparse.ArgumentParser], None]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def settings(args: argparse.Namespace) -> Settings:
    from gateway import settings as settings_module

    return settings_module.load(args.config)


def rules(s: Settings) -> RuleIndex:
    from gateway.rules.loader import load_rules

    return load_rules(s.rules_dir)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


def print_result(args: argparse.Namespace, data: Any, render: Callable[[Any], str]) -> None:
    """A command's result: JSON with --json, else the text ``render`` makes of it."""
    if args.json:
        print_json(data)
    else:
        print(render(data))


def open_readwrite(args: argparse.Namespace) -> tuple[Settings, Database, RuleIndex]:
    """For commands that change something: migrate, sync the rules, return ids."""
    from gateway.app import load_and_sync, open_database

    s = settings(args)
    database = open_database(s)
    return s, database, load_and_sync(s, database)


def open_readonly(args: argparse.Namespace) -> tuple[Settings, Engine]:
    """For commands that only look: a read-only engine on a schema at our revision
    (else SchemaNotCurrent, a UserError telling to run `gateway db upgrade`); nothing
    is migrated or synced."""
    from gateway.store import db

    s = settings(args)
    engine = db.make_readonly_engine(s.database_url, s.database.timeout_seconds)
    db.require_current_schema(engine)
    return s, engine
