"""Email-in pipeline aliases (SPEC section 3): records, threaded conversations, reopen.

A mail to an alias joins the record whose thread it continues (gateway/filing/threads.py),
or becomes a new record in the pipeline's first stage, linked to the sender's contact
(created from the sender when there is none).  A reply to a record in one of the
alias's closed stages reopens it.  Auto-replies, bounces and our own mail never
create records or contacts and never reopen; outside any thread they are accepted
and dropped (no backscatter).

Planning reads (the thread, the record's contact, its stage under a row lock) and
writes nothing; the store commits the plan (gateway/store/filing.py).
"""

from __future__ import annotations

from sqlalchemy import Connection

from gateway.addresses import looks_like_address
from gateway.filing import noise
from gateway.outcome import AliasPlan, DropNoise, JoinRecord, NewRecord, PersonWanted, StageChange
from gateway.filing.people import participants, sender_of, split_name
from gateway.filing.threads import find_thread
from gateway.message import ParsedMessage
from gateway.routing import AliasRoute
from gateway.rules.index import AliasEntry, RuleIndex
from gateway.store import records

NO_SUBJECT = "(no subject)"


def plan(conn: Connection, rules: RuleIndex, route: AliasRoute, parsed: ParsedMessage,
         envelope_sender: str) -> AliasPlan:
    alias = route.alias
    org = rules.orgs[route.org_id]
    pipeline = org.pipelines[alias.pipeline]
    assert pipeline.id is not None
    sender = sender_of(parsed, envelope_sender)
    kind = noise.classify(parsed, envelope_sender, sender, rules)
    thread = find_thread(conn, org_id=org.id, pipeline_id=pipeline.id, parsed=parsed, sender=sender,
                         record_token=org.record_token, prefix=pipeline.token_prefix)
    action: JoinRecord | NewRecord | DropNoise
    if thread.record_id is not None:
        action = _join(conn, thread.record_id, sender, alias, noise=kind is not None,
                       taking_part=participants(org, parsed, sender))
    elif kind is not None:
        action = DropNoise()
    else:
        owner = org.users.get(alias.owner)
        first, last = split_name(parsed.from_.name if parsed.from_ else "", sender)
        action = NewRecord(
            pipeline_id=pipeline.id, stage=pipeline.first_stage, title=parsed.subject.strip() or NO_SUBJECT,
            owner_id=owner.id if owner else None, tags=tuple(alias.tags),
            contact=PersonWanted(sender, ("contact",), "contact") if looks_like_address(sender) else None,
            first_name=first, last_name=last, participants=participants(org, parsed, sender),
        )
    return AliasPlan(org_id=route.org_id, route_key=route.key, alias=alias.address, pipeline=pipeline.name,
                     sender=sender, noise=kind, thread=thread, action=action)


def _join(conn: Connection, record_id: int, sender: str, alias: AliasEntry, *, noise: bool,
          taking_part: tuple[str, ...]) -> JoinRecord:
    if noise:
        # Noise joins the conversation and nothing more: no contact link, no
        # participant, no reopen.
        return JoinRecord(record_id, link_contact=None, participants=(), stage_change=None)
    reopens = bool(alias.reopen and alias.reopen_from)
    state = records.join_state(conn, record_id, lock=reopens)
    change = None
    if reopens and state.stage in alias.reopen_from:
        change = StageChange(state.stage, alias.reopen_to, "reply")
    contact = state.contact
    return JoinRecord(record_id, link_contact=contact[0] if contact and contact[1] == sender else None,
                      participants=taking_part, stage_change=change)
