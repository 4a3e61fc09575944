"""Password hashes for submission accounts: scrypt (hashlib, RFC 7914), never plain text.

Format: ``scrypt$<n>$<r>$<p>$<salt base64>$<key base64>``.  `gateway passwd` prints one.
Verification costs ~50-100 ms of CPU by design, so the submission listener runs it in
a thread of its own, never on the event loop (issue 11).  Successful checks are
remembered (keyed by a digest of hash and password, never the password) so a CRM
opening many connections does not pay it every time: ``remembered`` answers that
from the loop.  An unknown username costs the same scrypt as a wrong password, so
the time to answer does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache

_N, _R, _P = 2**14, 8, 1
_MAXMEM = 256 * 1024 * 1024


def hash_password(password: str, *, n: int = _N) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=_R, p=_P, dklen=32,
                         maxmem=_MAXMEM)
    return "$".join(["scrypt", str(n), str(_R), str(_P),
                     base64.b64encode(salt).decode(), base64.b64encode(key).decode()])


def is_valid_hash(value: str) -> bool:
    try:
        _parse(value)
    except ValueError:
        return False
    return True


def _parse(value: str) -> tuple[int, int, int, bytes, bytes]:
    parts = value.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("expected scrypt$n$r$p$salt$key (make one with: gateway passwd)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError("malformed scrypt hash (make one with: gateway passwd)") from exc
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or len(key) < 16:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, salt, key


def _fingerprint(password: bytes, stored: str) -> bytes:
    return hashlib.sha256(stored.encode() + b"\0" + password).digest()


def remembered(password: bytes, stored: str) -> bool:
    """This password was verified against this hash before (one SHA-256: fine on the loop)."""
    return _fingerprint(password, stored) in _verified_cache()


def verify(password: bytes, stored: str) -> bool:
    """scrypt: blocking, tens of milliseconds of CPU; hashlib releases the GIL meanwhile."""
    fingerprint = _fingerprint(password, stored)
    if fingerprint in _verified_cache():
        return True
    try:
        n, r, p, salt, key = _parse(stored)
    except ValueError:
        return False
    candidate = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=_MAXMEM)
    ok = hmac.compare_digest(candidate, key)
    if ok:
        # Set operations are atomic under the GIL; checks run in several threads.
        cache = _verified_cache()
        if len(cache) > 1024:
            cache.clear()
        cache.add(fingerprint)
    return ok


def verify_account(password: bytes, stored: str | None) -> bool:
    """verify(), or for no account (``stored`` None) the same work against a throwaway
    hash, and False."""
    if stored is None:
        verify(password, _throwaway_hash())
        return False
    return verify(password, stored)


@lru_cache(maxsize=1)
def _throwaway_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


@lru_cache(maxsize=1)
def _verified_cache() -> set[bytes]:
    return set()
