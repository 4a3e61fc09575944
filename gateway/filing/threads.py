"""Thread matching: which record a message belongs to, and why.

Order of evidence (first hit wins):
1. In-Reply-To naming a message already on a record of this pipeline;
2. References, newest first;
3. a message a user filed through their dropbox (a salesperson's BCC'd mail that the
   customer answers to the pipeline's alias): the record that mail's own thread is on
   ("dropbox"); when it is on none, the new record's conversation starts with it;
4. a record token such as [#S-42] in the subject, for clients that drop those
   headers -- only when the sender already took part in that record, so a stranger
   quoting a token starts a new record instead of joining someone else's.
All lookups are within one organisation and one pipeline (gateway/store/conversations.py).
"""

from __future__ import annotations

import re
from functools import lru_cache

from sqlalchemy import Connection

from gateway.outcome import ThreadMatch
from gateway.message import ParsedMessage
from gateway.rules.index import format_token
from gateway.store import conversations


@lru_cache(maxsize=64)
def token_pattern(fmt: str, prefix: str) -> re.Pattern[str]:
    literal = re.escape(fmt).replace(re.escape("{prefix}"), re.escape(prefix)).replace(re.escape("{id}"), r"(\d{1,18})")
    return re.compile(literal, re.IGNORECASE)


def tokens_in(subject: str, fmt: str, prefix: str) -> list[int]:
    return [int(x) for x in token_pattern(fmt, prefix).findall(subject)]


def header_evidence(parsed: ParsedMessage) -> tuple[list[tuple[str, str]], list[str]]:
    """(method, message id) pairs in order of evidence -- In-Reply-To, then References
    newest first -- and the distinct ids to look up (bounded)."""
    candidates = [("in-reply-to", mid) for mid in parsed.in_reply_to]
    candidates += [("references", mid) for mid in reversed(parsed.references)]
    return candidates, list(dict.fromkeys(mid for _, mid in candidates))[:100]


def first_evidence(candidates: list[tuple[str, str]], found: dict[str, int]) -> ThreadMatch | None:
    """The first (method, id) in order of evidence whose message is on a record."""
    for method, mid in candidates:
        if mid in found:
            return ThreadMatch(found[mid], method, mid)
    return None


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
    candidates, ids = header_evidence(parsed)
    dropbox_email = None
    if ids:
        found = conversations.records_by_message_id(conn, org_id, ids, pipeline_id=pipeline_id, participant=sender)
        match = first_evidence(candidates, found)
        if match is not None:
            return match
        match = _via_dropbox_mail(conn, org_id, pipeline_id, candidates, ids, sender)
        if match is not None and match.record_id is not None:
            return match
        dropbox_email = match.dropbox_email if match is not None else None
    ignored = ""
    for record_id in tokens_in(parsed.subject, record_token, prefix):
        token = format_token(record_token, prefix, record_id)
        if not conversations.record_in_pipeline(conn, org_id, pipeline_id, record_id):
            continue
        if conversations.takes_part(conn, record_id, sender):
            return ThreadMatch(record_id, "token", token)
        ignored = ignored or f"{token} from non-participant {sender}"
    return ThreadMatch(None, "none", token_ignored=ignored, dropbox_email=dropbox_email)


def _via_dropbox_mail(conn: Connection, org_id: str, pipeline_id: int, candidates: list[tuple[str, str]],
                      ids: list[str], sender: str) -> ThreadMatch | None:
    """The first message in order of evidence that a user filed through their dropbox:
    the record of this pipeline its own thread is on (method "dropbox"), else no record
    but that email (it starts the new record's conversation)."""
    mail = conversations.dropbox_mail(conn, org_id, ids)
    first = next((mid for _, mid in candidates if mid in mail), None)
    if first is None:
        return None
    email_id, answered = mail[first]
    if answered:
        on_records = conversations.records_by_message_id(conn, org_id, answered[:100], pipeline_id=pipeline_id,
                                                         participant=sender)
        earlier = next((mid for mid in answered if mid in on_records), None)
        if earlier is not None:
            return ThreadMatch(on_records[earlier], "dropbox", f"{first} (dropbox email {email_id}) answers {earlier}",
                               dropbox_email=email_id)
    return ThreadMatch(None, "none", dropbox_email=email_id)
