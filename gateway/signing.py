"""DKIM keys and signatures for outbound mail (dkimpy; RFC 6376).

Keys are RSA 2048, PKCS#1 PEM, written with mode 0600 by `gateway dkim keygen` to
the file the rules name; they never enter git.  Signatures are relaxed/relaxed
and cover dkimpy's default header selection, RFC 6376 5.4.1's "SHOULD be signed"
list as present in the message: From, Sender, Reply-To, Subject, Date,
Message-ID, To, Cc, In-Reply-To, References, the MIME and List-* fields; From is
signed once more than it occurs (oversigned), so a From added in transit breaks
the signature (RFC 6376 8.15).  Our own shorter list left Reply-To and Sender
unsigned: a relay could redirect the customer's answers (issue 11).
"""

from __future__ import annotations

import base64
import os
from functools import lru_cache
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

class DkimKeyError(Exception):
    pass


def generate_key(path: Path, bits: int = 2048, overwrite: bool = False) -> bytes:
    if path.exists() and not overwrite:
        raise DkimKeyError(f"{path} exists; use --force to replace it (the DNS record must change too)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _load.cache_clear()
    return pem


@lru_cache(maxsize=64)
def _load(path: Path, mtime: float) -> bytes:
    return path.read_bytes()


def load_key(path: Path) -> bytes:
    try:
        return _load(path, path.stat().st_mtime)
    except OSError as exc:
        raise DkimKeyError(f"cannot read DKIM key {path}: {exc.strerror}") from exc


def txt_record(private_pem: bytes) -> str:
    key = serialization.load_pem_private_key(private_pem, password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def dns_line(domain: str, selector: str, private_pem: bytes) -> str:
    """The record in zone-file form; long values split into 255-octet strings."""
    value = txt_record(private_pem)
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey.{domain}. IN TXT ( {chunks} )"


def sign(message: bytes, domain: str, selector: str, private_pem: bytes) -> bytes:
    """The DKIM-Signature header field (with CRLF) to put in front of the message."""
    # include_headers=None: dkimpy's default_sign_headers() (see the module docstring).
    return dkim.sign(message, selector.encode(), domain.encode(), private_pem,
                     canonicalize=(b"relaxed", b"relaxed"))


def sign_with_key_file(message: bytes, domain: str, selector: str, path: Path) -> bytes:
    """sign() with the key read from ``path``; DkimKeyError (naming the file) when it is
    missing, unreadable or not a usable private key."""
    pem = load_key(path)
    try:
        return sign(message, domain, selector, pem)
    except dkim.KeyFormatError as exc:
        raise DkimKeyError(f"DKIM key {path} is not a usable private key: {exc}") from exc
