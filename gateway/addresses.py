"""Address normalisation: one spelling per mailbox, for lookups and uniqueness.

Lower-cased as a whole (CRMs match customers case-insensitively; RFC 5321 allows
case-sensitive local parts but no real mailbox relies on it) and the domain in its
IDNA (punycode) form so Unicode and ASCII spellings of a domain meet.
"""

from __future__ import annotations


def normalise(address: str) -> str:
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    domain = domain.rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        pass
    return f"{local.lower()}@{domain}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def looks_like_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and " " not in address and "." in domain.strip("."))
