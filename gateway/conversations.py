"""Thread matching: which record a message belongs to, and why.

Order of evidence (first hit wins):
1. In-Reply-To naming a message already on a record of this pipeline;
2. References, newest first;
3. a record token such as [#S-42] in the subject, for clients that drop those
   headers -- only when the sender already took part in that record, so a stranger
   quoting a token starts a new record instead of joining someone else's.
All lookups are within one organisation and one pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

from sqlalchemy import Connection, select

from gateway.message import ParsedMessage
from gateway.store import models as m

# Date headers this far ahead of arrival still count (clock skew).
FUTURE_SKEW = timedelta(minutes=15)


@dataclass(frozen=True)
class ThreadMatch:
    record_id: int | None
    method: str  # in-reply-to | references | token | none
    evidence: str = ""
    token_ignored: str = ""  # a token seen from a non-participant


def format_token(fmt: str, prefix: str, record_id: int) -> str:
    return fmt.replace("{prefix}", prefix).replace("{id}", str(record_id))


@lru_cache(maxsize=64)
def token_pattern(fmt: str, prefix: str) -> re.Pattern[str]:
    literal = re.escape(fmt).replace(re.escape("{prefix}"), re.escape(prefix)).replace(re.escape("{id}"), r"(\d{1,18})")
    return re.compile(literal, re.IGNORECASE)


def tokens_in(subject: str, fmt: str, prefix: str) -> list[int]:
    return [int(x) for x in token_pattern(fmt, prefix).findall(subject)]


def sort_time(parsed: ParsedMessage, arrived: datetime) -> datetime:
    """Date header, or arrival when it is missing, unparseable or in the future.
    Always at the Date header's resolution (whole seconds), so that messages within
    one second are ordered by arrival (the second sort key), never by a mix of a
    truncated Date and a precise arrival time."""
    if parsed.date is None or parsed.date > arrived + FUTURE_SKEW:
        return arrived.replace(microsecond=0)
    return parsed.date.replace(microsecond=0)


def header_evidence(parsed: ParsedMessage) -> tuple[list[tuple[str, str]], list[str]]:
    """(method, message id) pairs in order of evidence -- In-Reply-To, then References
    newest first -- and the distinct ids to look up (bounded)."""
    candidates = [("in-reply-to", mid) for mid in parsed.in_reply_to]
    candidates += [("references", mid) for mid in reversed(parsed.references)]
    return candidates, list(dict.fromkeys(mid for _, mid in candidates))[:100]


def find_thread(
    conn: Connection,
    *,
    org_id: str,
    pipeline_id: int,
    parsed: ParsedMessage,
    sender: str,
    record_token: str,
    prefix: str,
) -> ThreadMatch:
    emails, links, records = m.Email.__table__, m.Link.__table__, m.Record.__table__
    parts = m.Participant.__table__
    candidates, ids = header_evidence(parsed)
    if ids:
        # A Message-ID may be on several records (mailers that reuse ids): the one
        # the sender takes part in wins, then the newest.
        rows = conn.execute(
            select(emails.c.message_id, links.c.target_id, parts.c.id.is_not(None))
            .join(links, (links.c.email_id == emails.c.id) & (links.c.kind == "record"))
            .join(records, records.c.id == links.c.target_id)
            .outerjoin(parts, (parts.c.record_id == links.c.target_id) & (parts.c.address == sender))
            .where(emails.c.org_id == org_id, emails.c.message_id.in_(ids), records.c.pipeline_id == pipeline_id)
        ).all()
        by_mid: dict[str, tuple[bool, int]] = {}
        for mid, record_id, participant in rows:
            by_mid[mid] = max((bool(participant), record_id), by_mid.get(mid, (False, 0)))
        for method, mid in candidates:
            if mid in by_mid:
                return ThreadMatch(by_mid[mid][1], method, mid)
    ignored = ""
    for record_id in tokens_in(parsed.subject, record_token, prefix):
        token = format_token(record_token, prefix, record_id)
        exists = conn.execute(
            select(records.c.id).where(records.c.id == record_id, records.c.org_id == org_id,
                                       records.c.pipeline_id == pipeline_id)
        ).scalar_one_or_none()
        if exists is None:
            continue
        known = conn.execute(
            select(parts.c.id).where(parts.c.record_id == record_id, parts.c.address == sender)
        ).scalar_one_or_none()
        if known is not None:
            return ThreadMatch(record_id, "token", token)
        ignored = ignored or f"{token} from non-participant {sender}"
    return ThreadMatch(None, "none", token_ignored=ignored)


def now() -> datetime:
    return datetime.now(timezone.utc)
