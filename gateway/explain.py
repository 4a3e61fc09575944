"""`gateway explain`: what the gateway would do with a message, per recipient, writing nothing.

It runs the delivery code itself -- routing, the dropbox and email-in filers, thread
matching, reopen -- inside transactions that are rolled back (Database.rolled_back),
so its answer and a real delivery of the same message cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from gateway import filing, trust
from gateway.delivery import guarded, reply_for
from gateway.errors import DeliveryFailure, MalformedMessage
from gateway.filing.policies import DEFAULT_LIMITS, Limits
from gateway.message import ParsedMessage
from gateway.parse import parse_message
from gateway.replies import REPLIES, Reply
from gateway.addresses import domain_of, normalise
from gateway.routing import DropboxCandidate, DropboxRoute, Route, classify, dropbox_route, serves_domain
from gateway.rules.index import RuleIndex
from gateway.outcome import Filing, decision_json
from gateway.store import dropboxes
from gateway.settings import Trust
from gateway.store.db import Database


def explain(database: Database, rules: RuleIndex, raw: bytes, rcpts: list[str], envelope_sender: str,
            trust_settings: Trust | None = None, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """`database`: one whose engine may run the filers' statements
    (store.db.make_dry_run_engine); every transaction is rolled back here.
    ``trust_settings``: gateway.toml's [trust] (whose Authentication-Results count; with
    verify_dkim the signatures are checked here too, as a delivery would)."""
    trust_settings = trust_settings or Trust()
    try:
        parsed = parse_message(raw)
    except MalformedMessage as exc:
        return {"message": {"parsed": False, "reason": exc.detail},
                "recipients": [_entry(r, None, exc.reply, {}) for r in rcpts]}
    parsed = trust.authenticate(parsed, trust_settings.authserv_ids, trust_settings.verify_dkim)
    out = []
    for rcpt in rcpts:
        if not serves_domain(rules, domain_of(normalise(rcpt))):
            out.append(_entry(rcpt, None, REPLIES.relay_denied, {"reason": "not a gateway domain: relaying denied"}))
            continue
        try:
            route = _route(database, rules, rcpt)
        except DeliveryFailure as exc:
            out.append(_entry(rcpt, None, exc.reply, {"reason": exc.detail}))
            continue
        if route is None:
            out.append(_entry(rcpt, None, REPLIES.no_such_user, {"reason": "unknown address, regenerated dropbox "
                                                                 "or a user without the dropbox permission"}))
            continue
        missing = _not_in_database(rules, route)
        if missing:
            # These rules were never loaded by a gateway on this database (explain
            # reads ids, it does not add rows): what filing would do is unknown.
            out.append(_entry(rcpt, route, None, {"reason": f"{missing} is not in the database yet: the gateway "
                                                            "adds it when it loads these rules (start or reload)"}))
            continue
        try:
            result = guarded(_file_rolled_back, f"file_{route.kind}")(database, rules, route, parsed, envelope_sender,
                                                                    limits)
        except DeliveryFailure as exc:
            out.append(_entry(rcpt, route, exc.reply, {"reason": exc.detail}))
            continue
        # Ids of things created in the rolled-back transaction are not real.
        shown = result.without_new_ids()
        decision = decision_json(shown.decision) if shown.decision is not None else {"duplicate": True}
        out.append(_entry(rcpt, route, reply_for(result), decision))
    return {
        "message": {"parsed": True, "message_id": parsed.message_id, "subject": parsed.subject,
                    "from": parsed.from_.address if parsed.from_ else None, "envelope_sender": envelope_sender,
                    "understood": understood(parsed)},
        "recipients": out,
    }


def understood(parsed: ParsedMessage) -> dict[str, Any]:
    """What the parser understood (issue 15): the forwarded original, the new text's
    split, the meeting invitation."""
    split = parsed.split
    out: dict[str, Any] = {
        "authentication": trust.as_json(parsed.authentication),
        "new_text": {"chars": len(split.new_text), "of": len(parsed.text_body.strip()),
                     "quote_marker": split.quote_marker or None, "signature": split.signature or None},
        "forward": None,
        "invitation": parsed.invitation.as_json() if parsed.invitation is not None else None,
    }
    fw = parsed.forward
    if fw is not None:
        out["forward"] = {"method": fw.method, "from": fw.from_.address if fw.from_ else None,
                          "to": [a.address for a in fw.to], "cc": [a.address for a in fw.cc],
                          "date": fw.date_text or None, "subject": fw.subject, "message_id": fw.message_id,
                          "note": fw.note, "problem": fw.problem or None}
    return out


def _route(database: Database, rules: RuleIndex, address: str) -> Route | None:
    """The route of an address, as at RCPT (blocking)."""
    found = classify(rules, address)
    if isinstance(found, DropboxCandidate):
        owner = guarded(database.reading, "dropbox_lookup")(dropboxes.owner, found.org_id, found.token)
        return dropbox_route(rules, found.org_id, owner)
    return found


def _file_rolled_back(database: Database, rules: RuleIndex, route: Route, parsed: Any,
                      envelope_sender: str, limits: Limits) -> Filing:
    """The real filing, in a transaction that is rolled back."""
    with database.rolled_back() as conn:
        return filing.file(conn, rules, route, parsed, envelope_sender, limits=limits)


def _not_in_database(rules: RuleIndex, route: Any) -> str | None:
    """The pipeline an alias files into needs its database id (a dropbox route is
    found through the database, so its user has one)."""
    if isinstance(route, DropboxRoute):
        return None
    pipe = rules.orgs[route.org_id].pipelines[route.alias.pipeline]
    return None if pipe.id is not None else f"pipeline {pipe.name} of {route.org_id}"


def _entry(rcpt: str, route: Any, reply: Reply | None, decision: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"rcpt": rcpt, "org": route.org_id if route else None,
                             "route": route.kind if route else None}
    if isinstance(route, DropboxRoute):
        entry["user"] = route.user.email
    elif route is not None:
        entry["alias"] = route.alias.address
        entry["pipeline"] = route.alias.pipeline
    entry["decision"] = decision
    entry["reply"] = str(reply) if reply is not None else None
    return entry


def _render_understood(u: dict[str, Any]) -> list[str]:
    lines = []
    for r in u.get("authentication", []):
        lines.append(f"authentication: {r['method']}={r['result']}" + (f" ({r['domain']})" if r["domain"] else "")
                     + f" by {r['source']}")
    fw = u["forward"]
    if fw is not None:
        lines.append(f"forward: {fw['method']}, original from {fw['from'] or '?'}"
                     f"{' dated ' + fw['date'] if fw['date'] else ''}  \"{fw['subject']}\"")
        if fw["problem"]:
            lines.append(f"  not filed as the original: {fw['problem']}")
        if fw["note"]:
            lines.append(f"  note: {fw['note'][:200]!r}")
    new = u["new_text"]
    cut = []
    if new["quote_marker"]:
        cut.append(f"quoted history from {new['quote_marker'][:120]!r}")
    if new["signature"]:
        cut.append(f"signature of {len(new['signature'].splitlines())} line(s)")
    lines.append(f"new text: {new['chars']} of {new['of']} characters" + ("; " + "; ".join(cut) if cut else
                                                                           "; nothing quoted, no signature"))
    inv = u["invitation"]
    if inv is not None:
        lines.append(f"invitation: {inv['method'] or '-'} {inv['summary']!r} {inv['start']} .. {inv['end']}, "
                     f"organiser {inv['organizer']}, attendees {', '.join(a['address'] for a in inv['attendees'])}")
    return lines


def render(report: dict[str, Any]) -> str:
    lines = []
    msg = report["message"]
    if not msg["parsed"]:
        lines.append(f"message: cannot be parsed ({msg['reason']})")
    else:
        lines.append(f"message: {msg['message_id'] or '(no Message-ID)'}  from {msg['from']}  \"{msg['subject']}\"")
        lines.extend(_render_understood(msg["understood"]))
    for r in report["recipients"]:
        d = r["decision"]
        lines.append(f"{r['rcpt']}")
        if r["route"] is None:
            lines.append(f"  route: none{' (' + d['reason'] + ')' if d.get('reason') else ''}")
        elif r["route"] == "dropbox":
            lines.append(f"  organisation {r['org']}, dropbox of {r['user']}")
        else:
            lines.append(f"  organisation {r['org']}, alias {r['alias']} -> pipeline {r['pipeline']}")
        if "sender_check" in d:
            lines.append(f"  sender {d['sender']}: {d['sender_check']}; search {d['search']}, creates {d['creates']}")
        if d.get("auth"):
            a = d["auth"]
            lines.append(f"  dropbox requires {a['requires']}: {'met' if a['met'] else 'NOT met'} ({a['reason']})")
        if d.get("held"):
            h = d["held"]
            lines.append(f"  held for review ({h['reason']}): {h['evidence']}")
        if d.get("spam"):
            lines.append(f"  spam verdict: {d['spam']} (a reply: filed all the same)")
        if d.get("forward"):
            f = d["forward"]
            if f["filed"] == "original":
                lines.append(f"  forward ({f['method']}): filed as the original, "
                             f"{'received from' if f['reason'] == 'received' else 'sent by'} {f['original_from']}"
                             f", dated {f['original_date'] or 'unknown (arrival used)'}")
            else:
                lines.append(f"  forward ({f['method']}): filed as it came: {f['reason']}")
        for p in d.get("people", []):
            ident = f" {p['id']}" if "id" in p else ""
            lines.append(f"  {p['address']}: {p['action']} {p['kind']}{ident}")
        if d.get("noise"):
            lines.append(f"  noise: {d['noise']}")
        if "thread" in d:
            t = d["thread"]
            how = f" by {t['evidence']}" if t.get("evidence") else ""
            lines.append(f"  thread: {t['method']}{how}" + (f" -> record {t['record_id']}" if t.get("record_id") else ""))
            if t.get("token_ignored"):
                lines.append(f"  token ignored: {t['token_ignored']}")
            if t.get("dropbox_email"):
                lines.append(f"  answers dropbox email {t['dropbox_email']}: it joins the record's conversation")
        if "participants" in d:
            lines.append(f"  participants: {', '.join(d['participants'])}")
        if d.get("contact"):
            lines.append(f"  contact: {d['contact']['action']}" + (f" {d['contact']['id']}" if "id" in d["contact"] else ""))
        if d.get("record"):
            lines.append(f"  record: {d['record']['action']}" + (f" {d['record']['id']}" if "id" in d["record"] else ""))
        if d.get("stage_change"):
            c = d["stage_change"]
            lines.append(f"  stage: {c['from'] or '-'} -> {c['to']} ({c['cause']})")
        if d.get("duplicate"):
            lines.append("  already filed: nothing new")
        if d.get("reason") and r["route"] is not None:
            lines.append(f"  reason: {d['reason']}")
        lines.append(f"  reply: {r['reply'] or 'unknown'}")
    return "\n".join(lines)
