"""The policies that may hold a message for review instead of filing it, or refuse it
(issue 16).  They run on a route's plan, before anything is written, in the delivery,
in `gateway explain` and in a quarantine replay alike -- not when a reviewer approves
a held message (gateway/review.py): the approval is the decision.

- dropbox: the organisation's ``dropbox_requires`` (none | dkim_or_spf | dmarc) against
  what its own MTA and our own checks say of the sender (ParsedMessage.authentication,
  gateway/trust.py); mail that fails is refused (550 5.7.1, nothing stored) or, with
  ``dropbox_on_fail = "review"``, held.
"""

from __future__ import annotations

from dataclasses import replace

from gateway import trust
from gateway.addresses import domain_of
from gateway.errors import PermanentFailure
from gateway.message import ParsedMessage
from gateway.outcome import AuthCheck, DropboxPlan, Hold, Plan
from gateway.replies import REPLIES
from gateway.rules.index import RuleIndex


def apply(rules: RuleIndex, parsed: ParsedMessage, plan: Plan, envelope_sender: str) -> Plan:
    """The plan, maybe held; raises PermanentFailure for mail a policy refuses."""
    if isinstance(plan, DropboxPlan):
        return _dropbox(rules, parsed, plan, envelope_sender)
    return plan


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
