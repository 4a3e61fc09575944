"""Who a message is from and who it is about: the sender (From, else the envelope),
the customers of a dropbox filing (SPEC 2.6), names split for a new contact."""

from __future__ import annotations

import re

from gateway.addresses import looks_like_address, normalise
from gateway.message import ParsedMessage
from gateway.rules.index import OrgEntry

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def sender_of(parsed: ParsedMessage, envelope_sender: str) -> str:
    """The From header's address; the envelope sender when From is missing or unusable."""
    if parsed.from_ and looks_like_address(parsed.from_.address):
        return normalise(parsed.from_.address)
    return normalise(envelope_sender)


def customers(org: OrgEntry, parsed: ParsedMessage, sender: str) -> list[str]:
    """SPEC 2.6: To and Cc minus the sender, the organisation's own people,
    domains and gateway addresses (dropbox and aliases live in the gateway domain)."""
    out: list[str] = []
    for a in parsed.to + parsed.cc:
        address = normalise(a.address)
        if not looks_like_address(address) or address == sender or org.is_own_address(address):
            continue
        if address not in out:
            out.append(address)
    return out


def participants(org: OrgEntry, parsed: ParsedMessage, sender: str) -> tuple[str, ...]:
    """Who takes part in a record by this mail (issue 15): its sender, and the external
    addresses of From, To and Cc -- the organisation's own people, domains and gateway
    addresses are not customers.  A record token in a later subject threads their mail."""
    out = [sender] if looks_like_address(sender) else []
    for a in ((parsed.from_,) if parsed.from_ else ()) + parsed.to + parsed.cc:
        address = normalise(a.address)
        if address not in out and looks_like_address(address) and not org.is_own_address(address):
            out.append(address)
    return tuple(out)


def split_name(display_name: str, address: str) -> tuple[str, str]:
    """(first, last) from a display name; the address as last name when there is none.
    CJK names are written family name first ("山田 太郎")."""
    name = " ".join(display_name.replace('"', " ").split())
    if not name or normalise(name) == address:
        return "", address
    parts = name.split(" ")
    if len(parts) == 1:
        return "", parts[0]
    if _CJK.search(name):
        return " ".join(parts[1:]), parts[0]
    return " ".join(parts[:-1]), parts[-1]
