"""Address normalisation: one spelling per mailbox, for lookups and uniqueness.

Lower-cased as a whole (CRMs match customers case-insensitively; RFC 5321 allows
case-sensitive local parts but no real mailbox relies on it) and the domain in its
IDNA (punycode) form so Unicode and ASCII spellings of a domain meet.

IDNA 2008 with the UTS 46 mapping (the ``idna`` package), not the stdlib's IDNA 2003
codec: that one maps ``faß.example`` to ``fass.example``, merging two different
domains; here ``faß.example`` is ``xn--fa-hia.example``.  A domain IDNA 2008 refuses
(symbols, a label too long) is kept lower-cased as written.
"""

from __future__ import annotations

from functools import lru_cache

import idna


@lru_cache(maxsize=4096)
def normalise_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain


def normalise(address: str) -> str:
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    return f"{local.lower()}@{normalise_domain(domain)}"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]


def looks_like_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain and " " not in address and "." in domain.strip("."))
