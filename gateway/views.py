"""What a CRM sees of an email and of a lead or contact: one JSON shape, built here for
the API's answers (gateway/api/) and for the events that tell about them
(gateway/events.py), from a stored row or from the values a filing just wrote."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping

def ts(value: datetime | None) -> str | None:
    """UTC ISO 8601 with Z (SQLite hands back naive datetimes; we only store UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat().replace("+00:00", "Z")


# The API's names of the stored sources (outbound mail is stored as relayed).
SOURCES = {"dropbox": "dropbox", "alias": "alias", "outbound": "relay"}
SHOWN_SOURCES = {stored: shown for shown, stored in SOURCES.items()}


def email(values: Mapping[str, Any], *, filed_by: str | None, links: Iterable[Mapping[str, Any]],
          attachments: Iterable[Mapping[str, Any]], bodies: bool = False) -> dict[str, Any]:
    """An email: ``values`` has the emails table's columns (a row's mapping, or what
    was inserted); ``links`` kind/id, ``attachments`` filename/content_type/size, in
    order (their index is their place)."""
    out = {
        "id": values["id"], "message_id": values["message_id"], "subject": values["subject"],
        "from": {"name": values["from_name"], "address": values["from_address"]},
        "to": list(values["to_addresses"]), "cc": list(values["cc_addresses"]),
        "date": ts(values["date"]), "received_at": ts(values["received_at"]),
        "kind": values["kind"], "direction": values["direction"],
        "source": SHOWN_SOURCES.get(values["source"], values["source"]),
        "filed_by": filed_by, "visibility": values["visibility"], "size": values["size"],
        "links": [{"kind": link["kind"], "id": link["id"]} for link in links],
        "attachments": [{"index": i, "filename": a["filename"], "content_type": a["content_type"], "size": a["size"]}
                        for i, a in enumerate(attachments)],
        # A forward filed as its original (issue 15): who forwarded it, their note.
        "forwarded_by": values["forwarded_by"], "forward_note": values["forward_note"],
        "invitation": values["invitation"],
    }
    if bodies:
        out["text_body"], out["html_body"] = values["text_body"], values["html_body"]
        out["new_text"] = values["new_text"]
    return out


def person(values: Mapping[str, Any], owner: str | None) -> dict[str, Any]:
    """A lead or contact: ``values`` has the leads/contacts table's columns; ``owner``
    the owner's address."""
    return {"id": values["id"], "email": values["email"], "first_name": values["first_name"],
            "last_name": values["last_name"], "external_id": values["external_id"], "owner": owner,
            "source": values["source"], "created_at": ts(values["created_at"]), "updated_at": ts(values["updated_at"])}


def public_id(org_id: str, seq: int) -> str:
    """An event's id: unique across organisations, the same in the feed and in every
    webhook attempt (``webhook-id``), and the feed's ``after=``."""
    return f"evt_{org_id}_{seq}"
