"""The policies that may hold a message for review instead of filing it, or refuse it
(issue 16).  They run on a route's plan, before anything is written, in the delivery,
in `gateway explain` and in a quarantine replay alike -- not when a reviewer approves
a held message (gateway/review.py): the approval is the decision.

- dropbox: the organisation's ``dropbox_requires`` (none | dkim_or_spf | dmarc) against
  what its own MTA and our own checks say of the sender (ParsedMessage.authentication,
  gateway/trust.py); mail that fails is refused (550 5.7.1, nothing stored) or, with
  ``dropbox_on_fail = "review"``, held.
- alias, in this order:
  1. ``accept_from``: ``contacts`` -- a new record only from an existing contact, a
     reply only from the record's participants or a contact; ``participants`` -- no new
     records, replies only from participants.  Refused mail gets 550 5.7.1 with the
     organisation's ``alias_refused_text`` (the sender's MTA writes the bounce: no
     backscatter from us), or with ``on_refused = "review"`` is held.
  2. spam: the MTA's verdict (X-Spam-Flag, or a score above [trust] spam_score_review):
     a new record is held; a reply is filed with the verdict in its decision.
  3. the cap: at most [limits] new_records_per_sender new records per sender address
     and window, counted in the database (store/review.count_new_record); beyond it
     held, with a log line naming the sender.
  Noise (auto-replies, bounces, loops) is none of their business: it never makes a
  record and is dropped outside a thread anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone

from sqlalchemy import Connection

from gateway import logs, metrics, trust
from gateway.addresses import domain_of
from gateway.errors import PermanentFailure
from gateway.message import ParsedMessage
from gateway.outcome import AliasPlan, AuthCheck, DropboxPlan, Hold, JoinRecord, NewRecord, Plan
from gateway.replies import REPLIES
from gateway.rules.index import RuleIndex
from gateway.settings import Settings
from gateway.store import conversations, people, review
from gateway.store.sql import now

log = logs.get("gateway.policies")


@dataclass(frozen=True)
class Limits:
    """gateway.toml's part of the policies ([limits] new_records_*, [trust]
    spam_score_review); DEFAULT_LIMITS has gateway.toml's defaults."""

    new_records_per_sender: int
    window_minutes: float
    exempt: frozenset[str]  # addresses and domains
    spam_score_review: float | None

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        limits = settings.limits
        return cls(limits.new_records_per_sender, limits.new_records_window_minutes,
                   frozenset(limits.new_records_exempt), settings.trust.spam_score_review)


DEFAULT_LIMITS = Limits.of(Settings())


def apply(conn: Connection, rules: RuleIndex, parsed: ParsedMessage, plan: Plan, envelope_sender: str,
          limits: Limits = DEFAULT_LIMITS) -> Plan:
    """The plan, maybe held; raises PermanentFailure for mail a policy refuses."""
    if isinstance(plan, DropboxPlan):
        return _dropbox(rules, parsed, plan, envelope_sender)
    return _alias(conn, rules, parsed, plan, envelope_sender, limits)


def _dropbox(rules: RuleIndex, parsed: ParsedMessage, plan: DropboxPlan, envelope_sender: str) -> DropboxPlan:
    org = rules.orgs[plan.org_id]
    if org.dropbox_requires == "none":
        return plan
    met, reason = trust.meets(parsed.authentication, org.dropbox_requires, domain_of(plan.sender))
    check = AuthCheck(org.dropbox_requires, met, reason,
                      tuple((r.method, r.result, r.domain, r.source) for r in parsed.authentication))
    if met:
        return replace(plan, auth=check)
    if org.dropbox_on_fail == "refuse":
        raise PermanentFailure(REPLIES.sender_not_authenticated,
                               f"{plan.sender} does not meet dropbox_requires = {org.dropbox_requires}: {reason}")
    return replace(plan, auth=check, hold=Hold("authentication", reason, plan.user, envelope_sender))


def _alias(conn: Connection, rules: RuleIndex, parsed: ParsedMessage, plan: AliasPlan, envelope_sender: str,
           limits: Limits) -> AliasPlan:
    if plan.noise is not None or not isinstance(plan.action, (JoinRecord, NewRecord)):
        return plan
    org = rules.orgs[plan.org_id]
    alias = rules.aliases[plan.alias]

    def hold(reason: str, evidence: str) -> AliasPlan:
        return replace(plan, hold=Hold(reason, evidence, plan.alias, envelope_sender))

    refused = _not_accepted(conn, plan, alias.accept_from)
    if refused:
        if alias.on_refused == "reject":
            raise PermanentFailure(REPLIES.sender_not_allowed.with_text(org.alias_refused_text),
                                   f"{plan.alias} accept_from = {alias.accept_from}: {refused}")
        return hold("sender_policy", f"accept_from = {alias.accept_from}: {refused}")
    verdict = trust.spam_verdict(parsed, limits.spam_score_review)
    if verdict.flagged:
        if isinstance(plan.action, NewRecord):
            return hold("spam", verdict.evidence)
        plan = replace(plan, spam=verdict.evidence)  # a reply: filed, and flagged
    if isinstance(plan.action, NewRecord) and limits.new_records_per_sender and not _exempt(plan.sender, limits):
        count = review.count_new_record(conn, plan.org_id, plan.sender, _window(limits.window_minutes))
        if count > limits.new_records_per_sender:
            metrics.review_capped.inc()
            log.warning("new_records_capped", org=plan.org_id, sender=plan.sender, count=count,
                        limit=limits.new_records_per_sender, window_minutes=limits.window_minutes)
            return hold("new_record_cap", f"{count} new records from {plan.sender} within "
                                          f"{limits.window_minutes:g} minutes (limit {limits.new_records_per_sender})")
    return plan


def _not_accepted(conn: Connection, plan: AliasPlan, accept_from: str) -> str:
    """Why the alias's accept_from refuses this mail ("" when it takes it)."""
    if accept_from == "everyone":
        return ""
    action = plan.action
    if isinstance(action, JoinRecord):
        if conversations.takes_part(conn, action.record_id, plan.sender):
            return ""
        if accept_from == "contacts" and people.find(conn, plan.org_id, "contact", plan.sender) is not None:
            return ""
        return f"{plan.sender} takes no part in record {action.record_id}"
    if accept_from == "participants":
        return f"{plan.sender} would open a new record (this alias takes replies only)"
    if people.find(conn, plan.org_id, "contact", plan.sender) is None:
        return f"{plan.sender} is not a contact"
    return ""


def _exempt(sender: str, limits: Limits) -> bool:
    return sender in limits.exempt or domain_of(sender) in limits.exempt


def _window(minutes: float) -> datetime:
    """The start of the fixed window now is in (the same in every process)."""
    size = max(int(minutes * 60), 1)
    epoch = int(now().timestamp())
    return datetime.fromtimestamp(epoch - epoch % size, timezone.utc)
