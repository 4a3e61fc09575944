"""`webhooks list|retry|test`: the [[webhooks]] of an organisation's rules (issue 14).

`list` only looks (read-only database); `retry` puts failed deliveries back to pending
(the daemon sends them at its next pass); `test` POSTs a signed ``ping`` straight to
the endpoints -- not through the outbox, nothing is stored -- and prints each answer.
"""

from __future__ import annotations

import argparse
import asyncio
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
    from gateway.events import PING
    from gateway.views import ts
    from gateway.store.sql import now
    from gateway.webhooks import read_secret, signed

    s = settings(args)
    org = _org(rules(s), args.org)
    hooks = [h for h in org.webhooks if args.url is None or h.url == args.url]
    if not hooks:
        raise UserError(f"{args.org} has no webhook {args.url}" if args.url else
                        f"{args.org} has no [[webhooks]] in its rule file")
    ok = True
    sends: list[tuple[str, str, bytes, dict[str, str]]] = []
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
        sends.append((hook.url, msg_id, body, headers))
    for line, sent in asyncio.run(_send_all(sends, s.webhooks.timeout_seconds)):
        print(line)
        ok = ok and sent
    return EXIT_OK if ok else EXIT_FAIL


async def _send_all(sends: list[tuple[str, str, bytes, dict[str, str]]],
                    timeout: float) -> list[tuple[str, bool]]:
    """Each ping sent with the daemon's client, one after another: what to print, and
    whether it got a 2xx."""
    from http import HTTPStatus

    import aiohttp

    from gateway.webhooks import attempt_error, client, post, request_error

    lines = []
    async with client(timeout) as session:
        for url, msg_id, body, headers in sends:
            try:
                async with asyncio.timeout(timeout):
                    status, location, answer = await post(session, url, body, headers)
            except TimeoutError:
                lines.append((f"{url}: {msg_id}: no answer within {timeout:g} s", False))
                continue
            except (aiohttp.ClientError, OSError) as exc:
                lines.append((f"{url}: {msg_id}: no answer: {request_error(exc)}", False))
                continue
            error = attempt_error(status, location)
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
            text = answer.decode("utf-8", "replace")[:ANSWER_CHARS].replace("\n", " ")
            lines.append((f"{url}: {msg_id}: {status} {reason}".rstrip() + (f" ({error})" if error else "")
                          + (f": {text}" if text else ""), error is None))
    return lines


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
