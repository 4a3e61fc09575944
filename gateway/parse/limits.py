"""The parser's bounds: how much of one message it looks at.

A message is hostile input of up to the gateway's size limit; each bound keeps the
time and memory of one parse proportional to its size and small.  Nothing beyond a
bound is lost: the raw message is stored whole, and a part the walker did not reach
is counted (ParsedMessage.skipped_parts) and logged.
"""

from __future__ import annotations

# Multipart nesting below this is treated as opaque.  Each level's body is cut out of
# its parent's, so the walk costs about depth x size; real mail nests a few levels.
MAX_DEPTH = 64
# Parts visited per message (each becomes a compat32 Message): real mail has tens,
# a message of 10 MB of empty parts would otherwise have hundreds of thousands.
MAX_PARTS = 5000
# Lines per header block; the rest is treated as body.  Keeps one part's header
# Message small whatever the block holds (a long Received chain is a few hundred).
MAX_HEADER_LINES = 10000
# Charset detection is pointless on tinier inputs.
DETECT_MIN = 16
# charset-normalizer samples, but stay bounded.
DETECT_MAX = 4 * 1024 * 1024
# Larger HTML gets the linear tag stripper (inscriptis ~0.6 s/MB).
HTML2TEXT_MAX = 512 * 1024
# Non-header lines skipped before the top-level header fields: salvages a mangled
# first line or two ("F\trom: ...") without taking a "word:" line deep inside a
# message that has no header section for one.
MAX_JUNK_LINES = 3
# Characters of a Date value looked at: the date interpreters are regex based, and
# no real date is longer.
DATE_MAX = 512
