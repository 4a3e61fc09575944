"""Contacts and leads the CRM sends: the one core behind `POST /v1/contacts|leads`, their
NDJSON import (`POST /v1/contacts|leads/import`) and `gateway import` (CSV or JSON lines).

A line is read (``ndjson`` / ``csv_rows``) and validated into a ``PersonIn`` -- the
API's item, pydantic with ``extra="forbid"``; the ``Importer`` resolves its owner
against the organisation's rules and turns it into a store ``Upsert``.  A line that
fails is an error with its line number (numbered from 1 as in the file; a CSV's
header row is line 1) and never stops the others; a later line with the email or
external_id of an earlier one is a duplicate.  Valid lines go to the database
BATCH_ROWS at a time, set-based (gateway/store/people.py ``upsert``), each batch in a
transaction of its own that the caller opens: an import of 100,000 rows never holds
SQLite's write lock for long, so the daemon keeps filing meanwhile, and a re-run
finds everything unchanged.

What a field means, everywhere: found by ``external_id`` when given, else by
``email``; a field left out keeps what is stored (a new person gets "" and no owner);
in JSON a ``null`` first_name, last_name or owner clears it; an empty CSV cell is a
field left out (a spreadsheet cannot say null).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import Connection

from gateway import events
from gateway.addresses import looks_like_address, normalise
from gateway.errors import UserError
from gateway.outcome import Kind
from gateway.rules.index import OrgEntry
from gateway.store import events as store_events, people as store_people
from gateway.store.people import Upsert, UpsertResult

BATCH_ROWS = store_people.CHUNK_ROWS  # rows per transaction (and per statement)
MAX_API_LINES = 10_000  # NDJSON lines per API request (more: 413)
COLUMNS = ("email", "first_name", "last_name", "external_id", "owner")
SUFFIXES = (".csv", ".jsonl", ".ndjson")

# Control characters never belong in an address, a name or an id (PostgreSQL refuses
# NUL in text); an unpaired surrogate cannot be stored as UTF-8 at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_IN_ADDRESS = re.compile(r"[\s,;:<>()\[\]\\\"]")


def _check_text(value: str) -> None:
    if _CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (an unpaired surrogate)") from None


def tell_created(conn: Connection, org_id: str, kind: Kind, results: Sequence[UpsertResult]) -> None:
    """contact.created / lead.created for the people ``results`` created, in the caller's
    transaction (one read of the rows, one write of the events)."""
    created = [r.id for r in results if r.action == "created" and r.id is not None]
    if created:
        store_events.append(conn, org_id, events.people_created(
            kind, store_people.with_owners(conn, kind, org_id, created)))


def checked_address(value: str) -> str:
    """The normalised address, or ValueError("bad address ...")."""
    _check_text(value)
    address = normalise(value)
    local, _, domain = address.rpartition("@")
    if (not looks_like_address(address) or "@" in local or _NOT_IN_ADDRESS.search(address)
            or len(local) > 64 or len(address) > 320 or ".." in domain or domain.startswith(".")):
        raise ValueError(f"bad address {value[:100]!r}")
    return address


class PersonIn(BaseModel):
    """A contact or lead as the CRM sends it: the body of a POST and each line of an import."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    email: str = Field(max_length=320, description="the address (matched and stored normalised)",
                       json_schema_extra={"format": "email"})
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=320)
    external_id: str | None = Field(None, min_length=1, max_length=255,
                                    description="the CRM's own id: matched first, unique per organisation")
    owner: str | None = Field(None, max_length=320, description="a user of the organisation (e-mail address)")

    @field_validator("email", "first_name", "last_name", "external_id", "owner")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None:
            _check_text(value)
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return checked_address(value)


# A line's number and its person, or why it has none.
Parsed = tuple[int, "PersonIn | str"]


def describe(exc: ValidationError) -> str:
    """A validation error as one line: what is wrong with which field."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind == "missing":
            parts.append(f"missing {where}")
        elif kind == "extra_forbidden":
            parts.append(f"unknown field {where!r} (fields: {', '.join(COLUMNS)})")
        elif kind == "json_invalid":
            parts.append(f"not JSON ({err.get('ctx', {}).get('error', err['msg'])})")
        elif not where:
            parts.append("not a JSON object")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(msg if msg.startswith("bad address") else f"{where}: {msg}")
    return "; ".join(parts)


def count_lines(data: bytes) -> int:
    """Lines of an NDJSON body (a last line without its newline counts; a final
    newline opens no line)."""
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def ndjson(lines: Iterable[bytes]) -> Iterator[Parsed]:
    """Each non-blank line (JSON text, numbered from 1) validated."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, PersonIn.model_validate_json(line)
        except ValidationError as exc:
            yield number, describe(exc)


def csv_rows(text: str) -> tuple[list[Parsed], list[str]]:
    """(each data row validated, numbered by the file line it starts on; the header
    columns that are ignored).  UserError when there is no header with an email column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise UserError(f"the header row cannot be read as CSV: {exc}") from exc
    if not header or not any(h.strip() for h in header):
        raise UserError(f"no header row: the first line names the columns ({', '.join(COLUMNS)})")
    names = [h.strip().lower().lstrip("\ufeff") for h in header]
    if "email" not in names:
        raise UserError(f"no email column in the header row (columns: {', '.join(COLUMNS)}; others are ignored)")
    where = {name: names.index(name) for name in COLUMNS if name in names}  # the first of a repeated name
    ignored = list(dict.fromkeys(h.strip() for h, n in zip(header, names) if n not in COLUMNS and h.strip()))
    out: list[Parsed] = []
    ended = reader.line_num
    while True:
        starts = ended + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit(); the reader goes on after it
            ended = reader.line_num
            out.append((starts, f"not CSV: {exc}"))
            continue
        ended = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        fields = {name: cells[i] for name, i in where.items() if i < len(cells) and cells[i].strip()}
        try:
            out.append((starts, PersonIn.model_validate(fields)))
        except ValidationError as exc:
            out.append((starts, describe(exc)))
    return out, ignored


def read_file(path: Path) -> tuple[list[Parsed], list[str]]:
    """A CSV (header row) or JSON-lines file, parsed: (rows, ignored CSV columns)."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: name it .csv (a header row) or .jsonl (a JSON object per line)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    if suffix != ".csv":
        return list(ndjson(data.split(b"\n"))), []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 (line {line}, byte {exc.start}): save it as CSV UTF-8") from exc
    return csv_rows(text)


class RowError(ValueError):
    """Why a valid line cannot be applied (an owner who is not a user of the organisation)."""


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, why)

    def add(self, result: UpsertResult, line: int) -> None:
        if result.action == "conflict":
            self.errors.append((line, result.detail))
        else:
            setattr(self, result.action, getattr(self, result.action) + 1)

    def as_json(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "unchanged": self.unchanged,
                "errors": [{"line": line, "error": why} for line, why in sorted(self.errors)]}


Batch = list[tuple[int, Upsert]]  # (line, what to write)


class Importer:
    """One import (or one POST) into one organisation's leads or contacts.  The caller
    runs ``write`` on each of ``batches`` in a transaction and hands the results to
    ``record``; ``report`` then holds the counts and the errors."""

    def __init__(self, org: OrgEntry, kind: Kind, *, source: str, default_owner: str | None = None):
        self.org, self.kind, self.source = org, kind, source
        self.report = ImportReport()
        self._default_owner_id = self._owner_id(default_owner) if default_owner else None

    def _owner_id(self, owner: str) -> int:
        user = self.org.users.get(normalise(owner))
        if user is None:
            raise RowError(f"unknown owner {owner[:100]!r}: not a user of {self.org.id}")
        if user.id is None:
            raise RowError(f"owner {owner!r} is not in the database yet (the gateway adds it when it loads the rules)")
        return user.id

    def upsert_of(self, person: PersonIn) -> Upsert:
        """What to write for ``person`` (RowError: an unknown owner)."""
        given = person.model_fields_set
        values: dict[str, Any] = {}
        for name in ("first_name", "last_name"):
            if name in given:
                values[name] = getattr(person, name) or ""
        if person.owner is not None:
            values["owner_id"] = self._owner_id(person.owner)
        elif "owner" in given:
            values["owner_id"] = None
        elif self._default_owner_id is not None:
            values["owner_id"] = self._default_owner_id
        return Upsert(person.email, person.external_id, values)

    def batches(self, parsed: Iterable[Parsed]) -> Iterator[Batch]:
        """The valid lines, BATCH_ROWS at a time; the others become errors here."""
        by_email: dict[str, int] = {}
        by_external: dict[str, int] = {}
        batch: Batch = []
        for line, person in parsed:
            if isinstance(person, str):
                self.report.errors.append((line, person))
                continue
            try:
                upsert = self.upsert_of(person)
            except RowError as exc:
                self.report.errors.append((line, str(exc)))
                continue
            first = by_email.get(upsert.email)
            if first is None and upsert.external_id is not None:
                first = by_external.get(upsert.external_id)
            if first is not None:
                same = "email" if by_email.get(upsert.email) == first else "external_id"
                self.report.errors.append((line, f"duplicate in file: same {same} as line {first}"))
                continue
            by_email[upsert.email] = line
            if upsert.external_id is not None:
                by_external[upsert.external_id] = line
            batch.append((line, upsert))
            if len(batch) == BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch

    def write(self, conn: Connection, batch: Batch) -> list[UpsertResult]:
        """Write one batch on the caller's transaction, with the events of the people
        it created."""
        results = store_people.upsert(conn, self.org.id, self.kind, [u for _, u in batch], self.source)
        tell_created(conn, self.org.id, self.kind, results)
        return results

    def record(self, batch: Batch, results: Sequence[UpsertResult]) -> None:
        """Count a batch's results (once its transaction has committed)."""
        for (line, _), result in zip(batch, results):
            self.report.add(result, line)
