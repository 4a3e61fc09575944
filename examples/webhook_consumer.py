"""A CRM's side of the gateway's events, to run against the demo: receive webhooks
(verified with the Standard Webhooks package, deduplicated by webhook-id) or read
the pull feed -- and print what happened.

Webhooks (the gateway posts to us):

    export ZYLKER_WEBHOOK_SECRET=$(python -c "import base64,os;print('whsec_'+base64.b64encode(os.urandom(24)).decode())")
    python examples/webhook_consumer.py serve --port 8090
    # rules/zylker.toml:  [[webhooks]]  url = "http://127.0.0.1:8090/hooks"  secret_env = "ZYLKER_WEBHOOK_SECRET"
    # then start (or `gateway reload`) the gateway with the same environment variable

The pull feed (we ask; for a CRM behind a firewall):

    python examples/webhook_consumer.py pull --token "$TOKEN" [--url http://127.0.0.1:8026/v1] [--follow]

Needs only the standard library and `standardwebhooks` (it comes with the gateway).  At-least-once:
the same event may arrive twice (a retry after a lost answer, a restart); its id is
the same, so keep the ids you handled -- here a set in memory, in a CRM a unique key.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks import Webhook, WebhookVerificationError


def describe(event: dict) -> str:
    """One line per event."""
    data, kind = event["data"], event["type"]
    if kind == "email.filed":
        email = data["email"]
        links = ", ".join(f"{link['kind']} {link['id']}" for link in email["links"])
        return f"{email['source']} mail {email['id']} {email['subject']!r} from {email['from']['address']} -> {links}"
    if kind == "record.created":
        record = data["record"]
        return f"record {record['id']} {record['token']} {record['title']!r} in {record['pipeline']}/{record['stage']}"
    if kind == "record.stage_changed":
        return f"record {data['record_id']}: {data['from']} -> {data['to']} ({data['reason']})"
    if kind in ("contact.created", "lead.created"):
        return f"{kind.split('.')[0]} {data['id']} {data['email']}"
    return json.dumps(data)[:200]


def serve(port: int, secret: str, store: Path | None) -> None:
    hook = Webhook(secret)
    seen: set[str] = set(store.read_text().split()) if store and store.exists() else set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                event = hook.verify(body, dict(self.headers))
            except WebhookVerificationError as exc:
                self.send_response(401)
                self.end_headers()
                print(f"refused: {exc}", file=sys.stderr)
                return
            event_id = self.headers["webhook-id"]
            if event_id not in seen:  # a repeat is answered 2xx and not handled twice
                seen.add(event_id)
                if store:
                    with store.open("a") as f:
                        f.write(event_id + "\n")
                print(f"{event_id}  {event['type']:<20} {describe(event)}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    print(f"listening on http://127.0.0.1:{port}/hooks", file=sys.stderr)
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()


def pull(url: str, token: str, after: str | None, follow: bool) -> None:
    while True:
        query = urllib.parse.urlencode({"limit": 500, **({"after": after} if after else {})})
        request = urllib.request.Request(f"{url}/events?{query}", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # raises HTTPError on 4xx/5xx
            page = json.load(answer)
        for event in page["items"]:
            print(f"{event['id']}  {event['type']:<20} {describe(event)}", flush=True)
        after = page["next_after"] or after  # keep it: the next run starts there
        if not page["items"]:
            if not follow:
                return
            time.sleep(2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="receive webhooks")
    s.add_argument("--port", type=int, default=8090)
    s.add_argument("--secret-env", default="ZYLKER_WEBHOOK_SECRET", help="the variable holding the whsec_ secret")
    s.add_argument("--store", type=Path, help="a file keeping the handled ids across restarts")
    f = sub.add_parser("pull", help="read the pull feed")
    f.add_argument("--url", default="http://127.0.0.1:8026/v1")
    f.add_argument("--token", required=True, help="an API token (`gateway token create --org zylker --name crm`)")
    f.add_argument("--after", help="the last event id handled")
    f.add_argument("--follow", action="store_true", help="keep polling")
    args = p.parse_args()
    if args.command == "serve":
        secret = os.environ.get(args.secret_env)
        if not secret:
            p.error(f"set {args.secret_env} to the endpoint's secret (the same the gateway reads)")
        serve(args.port, secret, args.store)
    else:
        pull(args.url, args.token, args.after, args.follow)


if __name__ == "__main__":
    main()
