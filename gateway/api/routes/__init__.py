"""The API's resources, one module each; ROUTERS is what gateway/api/app.py mounts under /v1.

    account.py   /quota
    people.py    /contacts, /leads (list, get, create-or-update, delete, NDJSON import)
    emails.py    /emails (list, get, raw, attachments), sharing enforced
    records.py   /records (list, get, PATCH stage/owner/tags)
    users.py     /users/{email}/dropbox (address, regenerate, vCard)
    events.py    /events (the pull feed of issue 14)
    review.py    /review (mail held for review: list, get, approve, reject; issue 16)
"""

from __future__ import annotations

from gateway.api.routes import account, emails, events, people, records, review, users

ROUTERS = [account.router, people.router, emails.router, records.router, users.router, events.router,
           review.router]
