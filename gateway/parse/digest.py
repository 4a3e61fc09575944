"""The content digest: what identifies a message's content across re-deliveries.

With the Message-ID it is the idempotency key stored with every delivery
(gateway.store.deliveries.message_key): any change to what is hashed, or how, makes
every re-delivery of mail filed before it a new message (filed twice).
"""

from __future__ import annotations

import hashlib

from gateway.parse.headers import HeaderSection

# What identifies a message's content across re-deliveries: the originator fields
# and the body.  Not trace fields (Received, Return-Path, Delivered-To,
# X-Original-To) nor what MTAs and filters add on the way (Authentication-Results,
# ARC-*, X-Spam-*, DKIM-Signature...): a delivery repeated through another hop must
# give the same digest.  Changing this changes every idempotency key (deliveries.message_key):
# it needs a migration that recomputes them (see migration 0006).
DIGEST_FIELDS = ("from", "date", "subject")


def content_digest(section: HeaderSection, raw: bytes) -> str:
    """sha256 of the From, Date and Subject fields (unfolded, runs of white space
    as one space) and of the body without its trailing white space (hashed in
    place: a big message is not copied).  Line ends are hashed as received: every
    hop speaks SMTP/LMTP with CR LF (normalising them cost more than the hash).

    ``section`` is the top-level header section of ``raw``; each field's value is
    hashed as the header scanner gives it (latin-1, one char per byte), in the
    order of DIGEST_FIELDS and, within one name, of the message."""
    sha = hashlib.sha256()
    for name in DIGEST_FIELDS:
        for field, value in section.fields:
            if field.lower() == name:
                sha.update(name.encode() + b":" + " ".join(value.split()).encode("latin-1", "replace") + b"\n")
    sha.update(b"\n")
    body_start = section.body_start
    end = len(raw)
    while end > body_start and raw[end - 1] in b" \t\r\n":
        end -= 1
    sha.update(memoryview(raw)[body_start:end])
    return sha.hexdigest()
