"""`webhooks list|retry|test`: the [[webhooks]] of an organisation's rules (issue 14).

`list` only looks (read-only database); `retry` puts failed deliveries back to pending
(the daemon sends them at its next pass); `test` POSTs a signed ``ping`` straight to
the endpoints -- not through the outbox, nothing is stored -- and prints each answer.
"""

from __future__ import annotations

import argparse
import secrets
from typing import TYPE_CHECKING, Any

from gateway.cli.common import EXIT_FAIL, EXIT_OK, open_readonly, open_readwrite, print_json, rules, settings
from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.cli.common import AddParser, Subparsers
    from gateway.rules.index import OrgEntry, RuleIndex

# What `webhooks test` prints of the receiver's answer.
ANSWER_CHARS = 200


def _org(index: RuleIndex, org_id: str) -> OrgEntry:
    org = index.orgs.get(org_id)
    if org is None:
        raise UserError(f"no organisation {org_id} in the rules (known: {', '.join(sorted(index.orgs)) or 'none'})")
    return org


def _list(args: argparse.Namespace) -> int:
    from gateway.events import public_id
    from gateway.views import ts
    from gateway.store import webhooks as store

    s, engine = open_readonly(args)
    _org(rules(s), args.org)
    with engine.connect() as conn:
        endpoints = store.listing(conn, args.org)
        failed = store.failed(conn, args.org) if args.failed else []
    for e in endpoints:
        for key in ("last_error_at", "last_success_at"):
            e[key] = ts(e[key])
        if args.failed:
            e["failed_deliveries"] = [
                {"event_id": public_id(args.org, f.seq), "type": f.type, "attempts": f.attempts,
                 "last_status": f.last_status, "last_error": f.last_error, "failed_at": ts(f.updated_at)}
                for f in failed if f.endpoint_id == e["id"]]
        del e["id"]
    if args.json:
        print_json(endpoints)
    else:
        print(render_listing(args.org, endpoints))
    return EXIT_OK


def render_listing(org_id: str, endpoints: list[dict[str, Any]]) -> str:
    if not endpoints:
        return f"no webhooks for {org_id} (add [[webhooks]] to its rule file)"
    out = []
    for e in endpoints:
        out.append(f"{e['url']}" + ("" if e["active"] else "  (INACTIVE: no longer in the rules)"))
        out.append(f"  events: {', '.join(e['events']) if e['events'] is not None else 'all'}")
        out.append(f"  pending {e['pending']}  failed {e['failed']}  delivered {e['delivered']}")
        out.append(f"  last success: {e['last_success_at'] or 'never'}")
        if e["last_error"]:
            out.append(f"  last error: {e['last_error_at']}  {e['last_error']}")
        for f in e.get("failed_deliveries", []):
            out.append(f"  FAILED {f['event_id']}  {f['type']}  {f['attempts']} attempts  {f['last_error']}")
    return "\n".join(out)


def _retry(args: argparse.Namespace) -> int:
    from gateway.events import seq_of
    from gateway.store import webhooks as store

    seq = None
    if args.event:
        seq = seq_of(args.org, args.event)
        if seq is None:
            raise UserError(f"{args.event} is not an event id of {args.org} (ids look like evt_{args.org}_42: see "
                            f"`gateway webhooks list --org {args.org} --failed`)")
    _, database, index = open_readwrite(args)
    _org(index, args.org)
    count = database.writing(store.retry, args.org, seq)
    if args.event and not count:
        raise UserError(f"no failed delivery of {args.event} (see `gateway webhooks list --org {args.org} --failed`)")
    print(f"{count} failed deliver{'y' if count == 1 else 'ies'} of {args.org} pending again, due now")
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    import httpx

    from gateway.events import PING
    from gateway.views import ts
    from gateway.store.sql import now
    from gateway.webhooks import attempt_error, read_secret, signed

    s = settings(args)
    org = _org(rules(s), args.org)
    hooks = [h for h in org.webhooks if args.url is None or h.url == args.url]
    if not hooks:
        raise UserError(f"{args.org} has no webhook {args.url}" if args.url else
                        f"{args.org} has no [[webhooks]] in its rule file")
    ok = True
    with httpx.Client(follow_redirects=False, timeout=s.webhooks.timeout_seconds) as http:
        for hook in hooks:
            secret, problem = read_secret(hook)
            if problem:
                print(f"{hook.url}: not sent: {problem}")
                ok = False
                continue
            assert secret is not None
            msg_id = f"evt_{org.id}_ping_{secrets.token_hex(8)}"
            body, headers = signed(secret, msg_id, {"type": PING, "timestamp": ts(now()), "data": {
                "message": f"a test of webhook {hook.url} of {org.id} by `gateway webhooks test`"}})
            try:
                response = http.post(hook.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                print(f"{hook.url}: {msg_id}: no answer: {type(exc).__name__}: {exc}")
                ok = False
                continue
            error = attempt_error(response.status_code, response.headers.get("location"))
            ok = ok and error is None
            answer = response.text[:ANSWER_CHARS].replace("\n", " ")
            print(f"{hook.url}: {msg_id}: {response.status_code} {response.reason_phrase}"
                  + (f" ({error})" if error else "") + (f": {answer}" if answer else ""))
    return EXIT_OK if ok else EXIT_FAIL


def _add_webhooks(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("webhooks", help="the [[webhooks]] of an organisation: deliveries, retries, a test")
    wsub = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    q = wsub.add_parser("list", parents=[common],
                        help="each endpoint: events, pending/failed/delivered counts, last error, last success")
    q.add_argument("--org", required=True, help="the organisation")
    q.add_argument("--failed", action="store_true",
                   help="also the failed deliveries (event id, type, attempts, last error)")
    q.add_argument("--json", action="store_true", help="print as JSON")
    q.set_defaults(func=_list)
    q = wsub.add_parser("retry", parents=[common],
                        help="failed deliveries back to pending, due now, with the whole retry schedule")
    q.add_argument("--org", required=True, help="the organisation")
    q.add_argument("--event", metavar="ID", help="only this event's (an id as the feed and webhook-id show it)")
    q.set_defaults(func=_retry)
    q = wsub.add_parser("test", parents=[common],
                        help="POST a signed ping event to each endpoint and print its answer (exit 1 unless 2xx)")
    q.add_argument("--org", required=True, help="the organisation")
    q.add_argument("--url", help="only this endpoint (one of the organisation's [[webhooks]] urls)")
    q.set_defaults(func=_test)


PARSERS: dict[str, AddParser] = {"webhooks": _add_webhooks}
