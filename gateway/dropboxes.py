"""Dropbox addresses as their users see them (SPEC section 2): who has one, the
address, and the vCard that puts it in an address book.  `gateway dropbox` and the
API (/v1/users/{email}/dropbox) both render these; the tokens themselves live in
gateway/store/dropboxes.py."""

from __future__ import annotations

from gateway.addresses import normalise
from gateway.rules.index import OrgEntry, UserEntry


def dropbox_user(org: OrgEntry, email: str) -> UserEntry | None:
    """``org``'s user ``email`` if they may use a dropbox now (SPEC 2.1: their role has
    the permission and they are active); None otherwise, whatever the reason."""
    user = org.users.get(normalise(email))
    if user is None or not user.may_use_dropbox or user.id is None:
        return None
    return user


def vcard(user: UserEntry, org: OrgEntry, address: str) -> str:
    """The address as a vCard 3.0 (SPEC 2.3), for the user's address book."""
    import vobject

    card = vobject.vCard()
    card.add("n").value = vobject.vcard.Name(family="Dropbox", given=(f"{user.first_name} {user.last_name}").strip())
    card.add("fn").value = f"CRM dropbox ({user.email})"
    card.add("org").value = [org.name]
    email = card.add("email")
    email.value = address
    email.type_param = "INTERNET"
    card.add("note").value = f"Put this address in Bcc to file the mail in the CRM ({org.name})."
    return str(card.serialize())
