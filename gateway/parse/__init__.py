"""Turn the raw bytes of one received e-mail into an immutable ParsedMessage.

Entry points (the value types live in :mod:`gateway.message`):

* :func:`parse_message` -- raw bytes to a :class:`gateway.message.ParsedMessage`;
* :func:`attachment` -- the bytes of the n-th attachment that ParsedMessage lists;
* :data:`DIGEST_FIELDS` -- the header fields in the content digest (the idempotency key);
* :func:`plain_addresses` -- the fast path of address-list parsing (also for tests).

Contract: :func:`parse_message` never raises anything but
:class:`gateway.errors.MalformedMessage`, and raises that only when there is
nothing to salvage (no bytes, or no header section at all).  Everything else
(broken MIME, bad base64, unknown charsets, NUL bytes, very long lines,
absurd nesting, missing or bad Message-ID/Date) is parsed as well as possible.
Every ``str`` field is safe for PostgreSQL ``text``: NUL characters are
removed and lone surrogates are replaced by U+FFFD.

The modules, one concept each (none imports this package's ``__init__``):

* ``assemble`` -- the entry points: one ParsedMessage from the steps below;
* ``headers`` -- THE header-section scanner (split_header_section; split_fields
  for the relay), unfolding, RFC 2047 and raw 8-bit header values;
* ``mime`` -- the MIME walk (iterative, bounded), parameters, file names, payloads;
* ``multipart`` -- cutting a multipart body at its boundary lines;
* ``fields`` -- address lists, message ids, dates;
* ``charsets`` -- charset labels to codecs, decoding text bodies;
* ``undeclared`` -- 8-bit header bytes without (or with a wrong) charset;
* ``jis`` -- the ISO-2022-JP codec as Windows and Outlook write it;
* ``html_text`` -- HTML bodies to text;
* ``newtext`` -- the text its author wrote: quoted history and signature apart;
* ``forwards`` -- a forward's original (attached, or a mail client's inline block);
* ``invitations`` -- a text/calendar part's meeting invitation;
* ``digest`` -- DIGEST_FIELDS and the content digest;
* ``text`` -- text hygiene (no NUL, no lone surrogates);
* ``limits`` -- the bounds on what one message may cost.
"""

from gateway.parse.assemble import attachment, parse_message
from gateway.parse.digest import DIGEST_FIELDS
from gateway.parse.fields import plain_addresses

__all__ = ["DIGEST_FIELDS", "attachment", "parse_message", "plain_addresses"]
