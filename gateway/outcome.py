"""What a filing decided and did, as typed, immutable data.

At the bottom of the house with gateway/message.py: imports nothing of ours.

A route's planning function (gateway/filing/dropbox.py, alias.py) computes a *plan*
from the parsed message, the rules and what it read; the store commits it
(gateway/store/filing.py) and returns a ``Filing``: the plan with the ids of what was
matched or created.  That one value is what delivery turns into the reply, the log
line and the metrics, what `gateway explain` renders, what is stored as the
delivery's decision and what `gateway record show` shows.

The stored decision is serialised here and only here (``decision_json``), in the
JSON shape the deliveries table has always held; ``decision_from_json`` reads it
back (stored decisions of any age, relay decisions included).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Mapping, Union

Kind = Literal["lead", "contact"]
Action = Literal["matched", "created", "joined"]
Result = Literal["filed", "dropped", "duplicate", "held"]


# --- the parts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """Mail no person wrote (gateway/filing/noise.py): never a record or contact."""

    kind: Literal["auto_reply", "bounce", "loop"]
    evidence: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.evidence}"


@dataclass(frozen=True)
class ThreadMatch:
    """Which record a message continues, and the evidence (gateway/filing/threads.py)."""

    record_id: int | None
    method: str  # in-reply-to | references | dropbox | token | none
    evidence: str = ""
    token_ignored: str = ""  # a token seen from a non-participant
    # The dropbox email (a user's BCC'd mail) this message answers: it joins the
    # record's conversation (issue 15).
    dropbox_email: int | None = None


@dataclass(frozen=True)
class StageChange:
    from_stage: str | None
    to_stage: str
    cause: Literal["created", "reply", "manual"]


@dataclass(frozen=True)
class Touched:
    """A record or contact the filing joined, matched or created (id None: not known,
    e.g. `gateway explain` of a creation that was rolled back)."""

    id: int | None
    action: Action


@dataclass(frozen=True)
class Person:
    """A customer address of a dropbox filing and the lead/contact it was filed under."""

    address: str
    kind: Kind
    id: int | None
    action: Action


@dataclass(frozen=True)
class PersonWanted:
    """A customer address to find (in search order) or create."""

    address: str
    search: tuple[Kind, ...]  # kinds to look in, in order
    creates: Kind


@dataclass(frozen=True)
class ForwardSeen:
    """A dropbox mail that is a forward (gateway/filing/dropbox.py): whether its
    original was filed in its place, and why."""

    method: str  # attachment | gmail | outlook | outlook-ja | apple | thunderbird | inline
    filed: Literal["original", "forward"]  # the original's fields, or the forwarding mail as it came
    # received: the user forwarded mail a customer sent them; sent: mail the user (or
    # a colleague) sent, filed like a BCC; else why the original could not be used.
    reason: str
    original_from: str = ""
    original_date: str | None = None  # ISO 8601 UTC, as stored


@dataclass(frozen=True)
class AuthCheck:
    """What dropbox mail had to show of its sender's authenticity (the organisation's
    ``dropbox_requires``), whether it did, and the results used (issue 16)."""

    requires: str  # none | dkim_or_spf | dmarc
    met: bool
    reason: str
    # (method, result, domain, source) of each result read: gateway.message.AuthResult
    results: tuple[tuple[str, str, str, str], ...] = ()


@dataclass(frozen=True)
class Hold:
    """Held for review instead of filed (issue 16): why, and what is needed to file it
    later through the same code (gateway/review.py)."""

    reason: str  # authentication | ...
    evidence: str
    route_ref: str  # the dropbox user's address or the alias address
    envelope_sender: str
    id: int | None = None  # the review queue's id, once stored


# --- plans: what to do, before anything is written -------------------------------------


@dataclass(frozen=True)
class DropboxPlan:
    """SPEC 2: the user's mail, filed under each customer (found or created)."""

    org_id: str
    route_key: str
    user: str
    user_id: int | None
    sender: str
    search: str
    creates: Kind
    customers: tuple[str, ...]
    wanted: tuple[PersonWanted, ...]
    # The user's sharing setting now (SPEC 2.12), kept with the email.
    visibility: str = "private"
    forward: ForwardSeen | None = None
    auth: AuthCheck | None = None
    hold: Hold | None = None
    # The message as filed when it is not the one delivered (a forward's original:
    # its sender, recipients, Date, Subject, Message-ID and text); None: as delivered.
    filed: Any = field(default=None, compare=False)


@dataclass(frozen=True)
class JoinRecord:
    """Continue a record's conversation; the sender takes part; maybe a reopen."""

    record_id: int
    link_contact: int | None  # the record's contact, when the sender is that contact
    # Who takes part from now on: the sender and the external addresses of From, To and
    # Cc (none for noise: it joins a thread without making anyone a participant).
    participants: tuple[str, ...]
    stage_change: StageChange | None


@dataclass(frozen=True)
class NewRecord:
    """A new record in the pipeline's first stage, with the sender as its contact."""

    pipeline_id: int
    stage: str
    title: str
    owner_id: int | None
    tags: tuple[str, ...]
    contact: PersonWanted | None  # None: the sender is not an address
    first_name: str
    last_name: str
    participants: tuple[str, ...] = ()  # the sender and the external addresses of From, To and Cc


@dataclass(frozen=True)
class DropNoise:
    """Noise outside any thread: accepted and dropped (no backscatter)."""


@dataclass(frozen=True)
class AliasPlan:
    """SPEC 3: a mail to a pipeline alias joins a thread, starts a record or is dropped."""

    org_id: str
    route_key: str
    alias: str
    pipeline: str
    sender: str
    noise: Noise | None
    thread: ThreadMatch
    action: JoinRecord | NewRecord | DropNoise
    # Issue 16 (gateway/filing/policies.py): held for review instead of filed; the MTA's
    # spam verdict on a reply that is filed all the same ("" when none).
    hold: Hold | None = None
    spam: str = ""


Plan = Union[DropboxPlan, AliasPlan]


# --- what was done ---------------------------------------------------------------------


@dataclass(frozen=True)
class DropboxDecision:
    user: str
    sender: str
    search: str
    creates: str
    customers: tuple[str, ...]
    people: tuple[Person, ...] = ()
    forward: ForwardSeen | None = None
    auth: AuthCheck | None = None
    held: Hold | None = None


@dataclass(frozen=True)
class AliasDecision:
    alias: str
    pipeline: str
    sender: str
    noise: Noise | None
    thread: ThreadMatch
    outcome: Literal["filed", "dropped", "held"]
    record: Touched | None = None
    # Present for a new record only (None: the sender is not an address).
    contact: Touched | None = None
    stage_change: StageChange | None = None
    new_record: bool = False
    participants: tuple[str, ...] = ()  # the addresses this mail made participants
    held: Hold | None = None
    spam: str = ""  # the MTA's spam verdict on a reply filed all the same


@dataclass(frozen=True)
class Link:
    """An email filed under a lead, contact or record."""

    kind: str
    id: int


@dataclass(frozen=True)
class RelayDecision:
    """Outbound mail relayed for the CRM (gateway/submit.py): who sent it, in which
    quota class, the record it belongs to, what the smarthost said, where it was filed."""

    login: str
    mail_class: str
    thread: ThreadMatch
    token_added: bool
    smarthost: str
    accepted: int
    refused: dict[str, str]
    links: tuple[Link, ...] = ()


@dataclass(frozen=True)
class RawDecision:
    """A stored decision kept as it is: a shape this version does not know."""

    fields: dict[str, Any] = field(default_factory=dict)


Decision = Union[DropboxDecision, AliasDecision, RelayDecision, RawDecision]


@dataclass(frozen=True)
class Filing:
    """One message filed (or not) for one route."""

    result: Result
    decision: Decision | None  # None for a duplicate: nothing new was decided
    email_id: int | None = None
    held_id: int | None = None  # held for review: its id in the queue (gateway/review.py)
    # What the commit wrote besides (for the events of the change, gateway/events.py):
    # its one time stamp, the emails row (with its id) and the email's links in the
    # order they were made.
    at: datetime | None = None
    links: tuple[Link, ...] = ()
    email: Mapping[str, Any] | None = field(default=None, compare=False)
    # The decision's JSON as stored with the delivery (encoded once, the event reuses it).
    decision_doc: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def duplicate(self) -> bool:
        return self.result == "duplicate"

    @property
    def dropped(self) -> bool:
        return self.result == "dropped"

    @property
    def held(self) -> bool:
        return self.result == "held"

    @property
    def hold(self) -> Hold | None:
        """Why a held filing was held (None for any other)."""
        return self.decision.held if isinstance(self.decision, (DropboxDecision, AliasDecision)) else None

    def created(self) -> list[str]:
        """Kinds of thing this filing created (for the metrics): lead, contact, record."""
        d = self.decision
        if isinstance(d, DropboxDecision):
            return [p.kind for p in d.people if p.action == "created"]
        if isinstance(d, AliasDecision):
            made = []
            if d.contact is not None and d.contact.action == "created":
                made.append("contact")
            if d.record is not None and d.record.action == "created":
                made.append("record")
            return made
        return []

    def reopened(self) -> bool:
        d = self.decision
        return isinstance(d, AliasDecision) and d.stage_change is not None and d.stage_change.cause == "reply"

    def without_new_ids(self) -> "Filing":
        """Ids of things created in a transaction that was rolled back are not real
        (`gateway explain`): the same filing with them removed."""
        d = self.decision
        if isinstance(d, DropboxDecision):
            d = replace(d, people=tuple(replace(p, id=None) if p.action == "created" else p for p in d.people))
        elif isinstance(d, AliasDecision):
            d = replace(d, record=_unsaved(d.record), contact=_unsaved(d.contact))
        return Filing(self.result, d, None)


def _unsaved(touched: Touched | None) -> Touched | None:
    return Touched(None, touched.action) if touched is not None and touched.action == "created" else touched


# --- the stored decision (JSON), in one place ------------------------------------------


def plan_json(plan: Plan) -> dict[str, Any]:
    """What is stored with the idempotency key when a delivery is claimed (replaced by
    the whole decision in the same transaction)."""
    if isinstance(plan, DropboxPlan):
        return _dropbox_json(DropboxDecision(plan.user, plan.sender, plan.search, plan.creates, plan.customers,
                                             forward=plan.forward, auth=plan.auth))
    return {"route": "alias", "alias": plan.alias, "pipeline": plan.pipeline, "sender": plan.sender,
            "noise": str(plan.noise) if plan.noise else None}


def decision_json(decision: Decision) -> dict[str, Any]:
    """A decision as stored in deliveries.decision (and shown by explain, record show)."""
    if isinstance(decision, DropboxDecision):
        out = _dropbox_json(decision)
        out["people"] = [_person_json(p) for p in decision.people]
        return out
    if isinstance(decision, AliasDecision):
        return _alias_json(decision)
    if isinstance(decision, RelayDecision):
        return _relay_json(decision)
    return dict(decision.fields)


def _relay_json(d: RelayDecision) -> dict[str, Any]:
    return {"route": "relay", "login": d.login, "class": d.mail_class, "thread": _thread_json(d.thread),
            "token_added": d.token_added, "smarthost": d.smarthost, "accepted": d.accepted,
            "refused": dict(d.refused), "links": [{"kind": link.kind, "id": link.id} for link in d.links]}


def _dropbox_json(d: DropboxDecision) -> dict[str, Any]:
    out = {"route": "dropbox", "user": d.user, "sender": d.sender, "sender_check": "registered",
           "search": d.search, "creates": d.creates, "customers": list(d.customers)}
    if d.forward is not None:  # only then: the decisions stored before keep their shape
        f = d.forward
        out["forward"] = {"method": f.method, "filed": f.filed, "reason": f.reason,
                          "original_from": f.original_from, "original_date": f.original_date}
    if d.auth is not None:
        out["auth"] = _auth_json(d.auth)
    if d.held is not None:
        out["held"] = _held_json(d.held)
    return out


def _auth_json(a: AuthCheck) -> dict[str, Any]:
    return {"requires": a.requires, "met": a.met, "reason": a.reason,
            "results": [{"method": m, "result": r, "domain": d, "source": s} for m, r, d, s in a.results]}


def _auth_from(data: dict[str, Any] | None) -> AuthCheck | None:
    if data is None:
        return None
    return AuthCheck(data["requires"], data["met"], data["reason"],
                     tuple((r["method"], r["result"], r["domain"], r["source"]) for r in data["results"]))


def _held_json(h: Hold) -> dict[str, Any]:
    return {"id": h.id, "reason": h.reason, "evidence": h.evidence, "recipient": h.route_ref,
            "envelope_sender": h.envelope_sender}


def _held_from(data: dict[str, Any] | None) -> Hold | None:
    if data is None:
        return None
    return Hold(data["reason"], data["evidence"], data["recipient"], data["envelope_sender"], data["id"])


def _person_json(p: Person) -> dict[str, Any]:
    out: dict[str, Any] = {"address": p.address, "kind": p.kind, "id": p.id, "action": p.action}
    if p.id is None:
        del out["id"]
    return out


def _touched_json(t: Touched | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {"id": t.id, "action": t.action} if t.id is not None else {"action": t.action}


def _thread_json(t: ThreadMatch) -> dict[str, Any]:
    out: dict[str, Any] = {"method": t.method, "evidence": t.evidence, "record_id": t.record_id}
    if t.token_ignored:
        out["token_ignored"] = t.token_ignored
    if t.dropbox_email is not None:
        out["dropbox_email"] = t.dropbox_email
    return out


def _thread_from(t: dict[str, Any]) -> ThreadMatch:
    return ThreadMatch(t["record_id"], t["method"], t.get("evidence", ""), t.get("token_ignored", ""),
                       t.get("dropbox_email"))


def _stage_json(c: StageChange | None) -> dict[str, Any] | None:
    return {"from": c.from_stage, "to": c.to_stage, "cause": c.cause} if c is not None else None


def _alias_json(d: AliasDecision) -> dict[str, Any]:
    out: dict[str, Any] = {"route": "alias", "alias": d.alias, "pipeline": d.pipeline, "sender": d.sender,
                           "noise": str(d.noise) if d.noise else None, "thread": _thread_json(d.thread)}
    if d.outcome == "held":
        out["outcome"] = "held"
        out["held"] = _held_json(d.held) if d.held is not None else None
        return out
    if d.outcome == "dropped":
        out["outcome"] = "dropped"
        return out
    if d.new_record:
        out["contact"] = _touched_json(d.contact)
        out["record"] = _touched_json(d.record)
        out["stage_change"] = _stage_json(d.stage_change)
        out["outcome"] = "filed"
    else:
        out["record"] = _touched_json(d.record)
        out["outcome"] = "filed"
        out["stage_change"] = _stage_json(d.stage_change)
    if d.participants:  # only then: the decisions stored before keep their shape
        out["participants"] = list(d.participants)
    if d.held is not None:
        out["held"] = _held_json(d.held)
    if d.spam:
        out["spam"] = d.spam
    return out


def decision_from_json(data: dict[str, Any]) -> Decision:
    """A stored decision read back; a shape this version does not know is kept as it
    is (RawDecision)."""
    try:
        if data.get("route") == "dropbox" and "people" in data:
            f = data.get("forward")
            dropbox = DropboxDecision(
                data["user"], data["sender"], data["search"], data["creates"], tuple(data["customers"]),
                tuple(Person(p["address"], p["kind"], p.get("id"), p["action"]) for p in data["people"]),
                ForwardSeen(f["method"], f["filed"], f["reason"], f["original_from"], f["original_date"])
                if f is not None else None, _auth_from(data.get("auth")), _held_from(data.get("held")))
            if decision_json(dropbox) == data:
                return dropbox
        if data.get("route") == "alias" and "outcome" in data:
            noise = None
            if data.get("noise"):
                kind, _, evidence = data["noise"].partition(": ")
                noise = Noise(kind, evidence)  # type: ignore[arg-type]
            t = data["thread"]
            change = data.get("stage_change")
            decision = AliasDecision(
                data["alias"], data["pipeline"], data["sender"], noise,
                _thread_from(t), data["outcome"],
                record=_touched_from(data.get("record")), contact=_touched_from(data.get("contact")),
                stage_change=StageChange(change["from"], change["to"], change["cause"]) if change else None,
                new_record="contact" in data, participants=tuple(data.get("participants", ())),
                held=_held_from(data.get("held")), spam=data.get("spam", ""),
            )
            if _alias_json(decision) == data:
                return decision
        if data.get("route") == "relay":
            t = data["thread"]
            relay = RelayDecision(
                data["login"], data["class"], _thread_from(t),
                data["token_added"], data["smarthost"], data["accepted"], dict(data["refused"]),
                tuple(Link(link["kind"], link["id"]) for link in data.get("links", [])))
            if _relay_json(relay) == data:
                return relay
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    return RawDecision(dict(data))


def _touched_from(data: dict[str, Any] | None) -> Touched | None:
    return Touched(data.get("id"), data["action"]) if data is not None else None
