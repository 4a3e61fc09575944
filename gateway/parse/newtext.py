"""What the author of a message wrote: the text body without its quoted history and
its signature (:func:`split` -> :class:`gateway.message.TextSplit`).

The library ``mail-parser-reply`` (module ``mailparser_reply``) finds the reply
headers of the common clients ("On ... wrote:", Outlook's "From:/Sent:/To:" block,
"-----Original Message-----", Gmail's Japanese "2026年11月30日(月) 10:00 名前 <addr>:")
and the signatures ("-- ", "Sent from my ...", "Best regards," ...).  This module
adds what it lacks, each a small regular expression: Japanese Outlook headers
(差出人/送信日時/宛先/件名), "-----元のメッセージ-----", the forward markers of Gmail,
Apple Mail and Thunderbird, Gmail's "... <addr> wrote:" in Japanese and its Spanish
"... escribió:", a trailing block of ">" lines, the "-- " delimiter and Japanese
signatures under a rule line (━━━━, ====, ----...).  It also works around the
library's defects (see the comments in :func:`_seen_lines`, :func:`_header_lines`
and :func:`_library_signature`).

Bounds: only the first :data:`SCAN_MAX` characters are looked at, lines only up to
:data:`LINE_MAX` characters, and a precompiled regular expression skips all of it
for text that cannot hold a quote or a signature.  :func:`split` never raises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from mailparser_reply.parser import EmailMessage

from gateway.message import TextSplit

__all__ = ["SCAN_MAX", "split"]

# Characters of the text looked at; a split point further down is not searched for.
SCAN_MAX = 64 * 1024
# Characters of one line the regular expressions see: the library's "On ... wrote:"
# patterns take time quadratic or worse in the length of a line (_header_lines).
LINE_MAX = 200
# Languages of the library's header and signature patterns.
LANGUAGES = ("en", "ja", "de", "fr", "es")
# A signature found by the library: at most this many lines, first line included.
SIGNATURE_MAX_LINES = 12
# A sign-off line ("Best regards,", "Thanks,"): at most this many characters.
SIGN_OFF_MAX = 30
# Lines after a "-- " delimiter, and after a Japanese rule line (━━━━━━━━).
DELIMITER_MAX_AFTER = 15
RULE_MAX_AFTER = 12
# Lines a reply header of the library may span ("On ...\n... wrote:" and longer).
HEADER_SPAN = 5
# Lines starting like an "On ... wrote:" header that the library is shown.
HEADER_WINDOWS_MAX = 16

# Bare sign-off lines (no comma) a library signature may start with.
SIGN_OFF_WORDS = (
    "best regards", "kind regards", "regards", "best", "all the best", "thanks", "thank you", "cheers",
    "mit freundlichen grüßen", "mit freundlichen grüssen", "viele grüße", "viele grüsse", "beste grüße",
    "besten grüße", "liebe grüße", "grüße", "gruß",
    "cordialement", "salutations", "bonne journée", "saludos", "un saludo", "atentamente", "cordialmente",
)  # fmt: skip
# First words of a phone / Outlook app signature, in the languages above.
SENT_FROM = ("sent from", "get outlook", "gesendet von", "enviado desde", "envoyé depuis")
# Lower-cased starts of the lines where the library or the patterns below can find a
# quote or a signature (the fast path's words).  Each stands for all its
# continuations ("on " for "On Mon, ... wrote:").
LINE_STARTS = (
    ">", "*", *SENT_FROM, "begin forwarded", "差出人", "送信者",
    # the library's reply headers: "On ... wrote:" and its de/fr/es forms
    "on ", "am ", "le ", "el ",
    # the library's Outlook header block ("From: ...\nSent: ..."), en/de/es/fr
    "from:", "sent:", "to:", "subject:", "date:", "cc:", "organization:",
    "von:", "gesendet:", "an:", "betreff:", "datum:", "organisation:",
    "de:", "enviado:", "para:", "asunto:", "fecha:", "organización:",
    "de :", "envoyé :", "à :", "objet :", "cc :",
    # the library's sign-offs
    "best regards", "kind regards", "thanks,", "thank you,", "best,", "all the best", "regards,",
    "mit freundlichen gr", "beste gr", "besten gr", "liebe gr", "viele gr", "grü", "grue", "gruß", "gruss",
    "saludos,", "atentamente,", "gracias,", "un saludo,", "cordialmente,", "muchas gracias,",
    "cordialement", "salutations", "bonne r", "bonne journ",
)  # fmt: skip


def _prefix_regex(words: Iterable[str]) -> str:
    """A regex matching the start of any of ``words``, factored on common prefixes:
    the engine tries alternatives one after the other, so each first character is
    tested once ("s(?:ent(?: from|:)|ubject:)" rather than three alternatives)."""
    groups: dict[str, list[str]] = {}
    for word in sorted(set(words)):
        groups.setdefault(word[0], []).append(word[1:])
    alternatives = []
    for first, rests in groups.items():
        common = os.path.commonprefix(rests)
        start = re.escape(first + common)
        rests = [rest[len(common) :] for rest in rests]
        # A word that is the prefix of another stands for it.
        alternatives.append(start if "" in rests else f"{start}(?:{_prefix_regex(rests)})")
    return "|".join(alternatives)


_SIGN_OFF_WORD = re.compile(f"(?:{'|'.join(map(re.escape, SIGN_OFF_WORDS))})[.!]?", re.IGNORECASE)

# Can the text hold a quote or a signature at all?  Searched in "\n" + the lower-cased
# text: its literal prefix "\n" lets the engine jump from line to line, and each line
# costs a few character tests.  Must match wherever the library or the patterns
# below can find a split point.
_FAST = re.compile(
    rf"\n[^\S\n]*(?:{_prefix_regex(LINE_STARTS)}"
    r"|[-_=━─＝*＊~〜―－＿]{2}"  # "-- ", "-----Original Message-----", "____", "━━━━", forward markers
    r"|\d{4}年)"  # Gmail's "2026年11月30日(月) 10:00 山田 太郎 <yamada@customer.example>:"
)

# Where the quoted history starts (our additions to the library's headers).  Run on
# the stripped lines; the leftmost match wins.
_QUOTE_START = re.compile(
    "|".join(
        (
            # -----Original Message----- / -----元のメッセージ----- (old Outlook)
            r"^-{5,}[ \t]*(?:original message|元のメッセージ)[ \t]*-{5,}$",
            # Gmail ("---------- Forwarded message ---------", "---------- 転送メッセージ ----------"),
            # Thunderbird ("-------- Forwarded Message --------")
            r"^-{2,}[ \t]*(?:forwarded message|転送メッセージ)[ \t]*-{2,}$",
            # Apple Mail
            r"^begin forwarded message[ \t]*:$",
            # Gmail in Spanish (the library's pattern wants two spaces before "escribió"
            # and is cancelled by its own negative lookahead)
            r"^el [^\n]* escribió ?:$",
            # Japanese Outlook: 差出人/送信者 and a second header field on the next line.
            r"^[* ]*(?:差出人|送信者)[* ]*[:：][^\n]*\n"
            r"[* ]*(?:送信日時|日時|日付|宛先|cc|bcc|件名|差出人|送信者)[* ]*[:：]",
            # Gmail in Japanese, with the library's ":" or a mixed setup's " wrote:";
            # Gmail may wrap the line before the address.
            r"^\d{4}年\d{1,2}月\d{1,2}日[ \t]*[(（][^)）\n]{1,4}[)）][ \t]*\d{1,2}:\d{2}"
            r"[^<\n]*(?:\n[^<\n]*)?<[^<>\n@]+@[^<>\n]+>[ \t]*(?:wrote)?[ \t]*[:：]$",
        )
    ),
    re.MULTILINE | re.IGNORECASE,
)
# Outlook's line above its header block; part of the quote.
_OUTLOOK_RULE = re.compile(r"[_＿]{8,}")
# A Japanese signature's rule line (also the frame above and below the box).
_SIGNATURE_RULE = re.compile(r"[-=＝━─_*＊~〜―－＿]{8,}")
# A line the library's _normalize_text deletes with the blank lines above it (see
# _seen_lines).
_LIBRARY_SEPARATOR = re.compile(r" ?[_-]{32,}")
# Where the library's "On ... wrote:" patterns (and their de/fr/es/ja forms) start.
_WROTE_START = re.compile(r"^((?:> ?)*)(?=(?:on|am|le|el)\s|\d{4}年)", re.IGNORECASE)
# A field of the library's Outlook header block.
_HEADER_FIELD = re.compile(
    r"(?:> ?)*[* ]*(?:from|sent|to|subject|date|cc|organi[sz]ation|von|gesendet|an|betreff|datum|de|envoyé|à"
    r"|objet|enviado|para|asunto|fecha|organización) ?:",
    re.IGNORECASE,
)


def split(text: str) -> TextSplit:
    """Split ``text`` (a text body with "\\n" line ends) into what its author wrote,
    the line where the quoted history starts and the signature."""
    try:
        head = text[:SCAN_MAX]
        if not _FAST.search(f"\n{head.lower()}"):
            return TextSplit(text.strip())
        return _split(text, head)
    except Exception:  # third-party regex code on hostile input: never fail a parse
        return TextSplit(text.strip())


def _split(text: str, head: str) -> TextSplit:
    truncated = len(head) < len(text)
    if truncated and "\n" in head:
        head = head[: head.rindex("\n")]  # no partial last line
    lines = head.split("\n")
    seen, where = _seen_lines(lines)

    quote = _quote_start(seen)
    if quote is None:
        if truncated:  # a signature at the end of the head is not at the end of the text
            return TextSplit(text.strip())
        end = len(seen)
        marker = ""
    else:
        marker = lines[where[quote]].strip()
        end = quote
        above = end - 1
        while above >= 0 and not seen[above]:
            above -= 1
        if above >= 0 and _OUTLOOK_RULE.fullmatch(seen[above]):
            end = above
    while end and not seen[end - 1]:
        end -= 1
    begin = 0
    if not end:
        # Bottom-posting: the quote comes first, the answer below its ">" lines.
        below = _below_quote(seen, quote) if quote is not None else None
        if below is None:
            return TextSplit("", marker)
        begin, end = below, len(seen)
        while not seen[end - 1]:
            end -= 1

    region = seen[begin:end]
    starts = [s for s in (_library_signature(region), _delimiter(region), _rule(region)) if s is not None]
    top, last = where[begin], where[end - 1] + 1
    if not starts:
        return TextSplit("\n".join(lines[top:last]).strip(), marker)
    first = where[begin + min(starts)]
    return TextSplit("\n".join(lines[top:first]).strip(), marker, "\n".join(lines[first:last]).strip())


def _below_quote(seen: list[str], quote: int) -> int | None:
    """Where the answer of a bottom-posted reply starts: the first line after the last
    ">" line of a quote at the top (None when nothing but blank lines follows, or the
    quote has no ">" lines)."""
    quoted = [i for i in range(quote, len(seen)) if seen[i].startswith(">")]
    if not quoted:
        return None
    after = quoted[-1] + 1
    while after < len(seen) and not seen[after]:
        after += 1
    return after if after < len(seen) else None


def _seen_lines(lines: list[str]) -> tuple[list[str], list[int]]:
    """The lines the patterns see (stripped, cut to LINE_MAX, at most one blank line
    in a row), and for each the index of its line in ``lines``.

    Library defect: ``_normalize_text`` deletes a line of 32+ underscores or dashes
    together with the blank lines above it (a ``re.sub`` meant to add a line break,
    ``re.MULTILINE`` passed as its count): a signature it finds there would not be
    the end of our text.  The blank lines above such a line are dropped here, so the
    library's text is exactly ours.
    """
    seen: list[str] = []
    where: list[int] = []
    for index, line in enumerate(lines):
        line = line.strip()[:LINE_MAX]
        if not line and seen and not seen[-1]:
            continue
        if _LIBRARY_SEPARATOR.match(line):
            while seen and not seen[-1]:
                seen.pop()
                where.pop()
        seen.append(line)
        where.append(index)
    return seen, where


def _message(lines: list[str]) -> EmailMessage:
    return EmailMessage(text="\n".join(lines), languages=list(LANGUAGES), keep_hyphen_lists=True).read()


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position)


def _quote_start(seen: list[str]) -> int | None:
    """Index in ``seen`` of the line where the quoted history starts, or None."""
    text = "\n".join(seen)
    starts: list[int] = []

    match = _QUOTE_START.search(text)
    if match:
        starts.append(_line_of(text, match.start()))

    # A trailing block of ">" lines with new text above it (the library does not do
    # this).  Only at the end: ">" lines with text between them are an inline reply.
    index = len(seen)
    block = None
    while index and (not seen[index - 1] or seen[index - 1].startswith(">")):
        index -= 1
        if seen[index]:
            block = index
    if block is not None and any(seen[:block]):
        starts.append(block)

    # The library's first reply header: the header of replies[1], or of replies[0]
    # when the text starts with one, found in the text with str.find as the library
    # does.  A header further down than ours does not matter: the library sees the
    # lines down to ours (and the few a header spans).
    shown = _header_lines(seen[: min(starts) + HEADER_SPAN] if starts else seen)
    replies = _message(shown).replies
    header = replies[0].headers or (replies[1].headers if len(replies) > 1 else "")
    if header:
        shown_text = "\n".join(shown)
        position = shown_text.find(header)
        if position >= 0:
            starts.append(_line_of(shown_text, position))
    return min(starts) if starts else None


def _header_lines(lines: list[str]) -> list[str]:
    """``lines`` with each line that cannot be part of a reply header replaced by ".".

    Library defect: its "On ... wrote:" patterns (and the de/fr/es/ja ones) take time
    quadratic or worse in the length of each line starting with "On "/"Am "/"Le "/
    "El " or holding a Japanese date; 64 KB of such lines take seconds.  The library
    sees only the Outlook header fields and the first HEADER_WINDOWS_MAX such lines
    with a line ending in ":" close enough for a header (with those lines).
    """
    keep = [False] * len(lines)
    windows = 0
    for index, line in enumerate(lines):
        span = 0
        if _HEADER_FIELD.match(line):
            span = 3  # a field may continue on the next line, the block takes one more
        elif windows < HEADER_WINDOWS_MAX and _WROTE_START.match(line):
            if any(following.endswith(":") for following in lines[index : index + HEADER_SPAN]):
                span = HEADER_SPAN
                windows += 1
        for kept in range(index, min(index + span, len(lines))):
            keep[kept] = True
    return [line if keep[index] or not line else "." for index, line in enumerate(lines)]


def _accept(region: list[str], start: int) -> bool:
    """Is the library's signature candidate starting at ``region[start]`` one?"""
    if len(region) - start > SIGNATURE_MAX_LINES:
        return False
    first = region[start]
    if first.startswith(">"):
        return False
    return (
        first == "--"
        or first.lower().startswith(SENT_FROM)
        or (len(first) <= SIGN_OFF_MAX and first.endswith(","))
        or _SIGN_OFF_WORD.fullmatch(first) is not None
    )


def _library_signature(region: list[str]) -> int | None:
    """Index of the first line of the signature the library finds, or None."""
    # An accepted signature has at most SIGNATURE_MAX_LINES lines: the library sees
    # those and the line above (its sign-offs must not start the text).  A line start
    # its header patterns would take long on is broken by a zero-width space.
    offset = max(0, len(region) - SIGNATURE_MAX_LINES - 1)
    shown = [_WROTE_START.sub("\\1\u200b", line, count=1) for line in region[offset:]]
    text = "\n".join(shown)
    if not _FAST.search(f"\n{text.lower()}"):
        return None
    message = _message(shown)
    signature = message.replies[0].signatures
    if not signature:
        return None
    # Library defect: EmailReply.body removes the signature with str.replace, so the
    # same words earlier in the text ("Sent from my iPhone, ...") go too.  The
    # signature regex runs to the end of the text: cut it from the end instead.
    if not text.endswith(signature):
        return None
    start = _line_of(text, len(text) - len(signature))
    # Library defect: its sign-off patterns fire on any line starting with "Thanks,"
    # or "Best," ("Thanks, that works for me.") and take everything after it.  Keep
    # such a line and look for a later candidate with the library's own regex.
    pattern = message.SIGNATURE_REGEX
    offsets = [0]
    for line in shown[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    while not _accept(region, offset + start):
        if start + 1 >= len(shown):
            return None
        match = pattern.search(text, offsets[start + 1])
        if not match:
            return None
        found = match.group()
        start = _line_of(text, match.start() + len(found) - len(found.lstrip()))
    return offset + start


def _delimiter(region: list[str]) -> int | None:
    """The "-- " signature delimiter: a line "--" with at most DELIMITER_MAX_AFTER
    lines after it."""
    for index, line in enumerate(region):
        if line == "--" and len(region) - index - 1 <= DELIMITER_MAX_AFTER:
            return index
    return None


def _rule(region: list[str]) -> int | None:
    """A Japanese signature: a rule line (8+ of -=＝━─_*＊~〜) with text above it and
    1 to RULE_MAX_AFTER lines after it."""
    seen_text = False
    for index, line in enumerate(region):
        after = len(region) - index - 1
        if seen_text and 1 <= after <= RULE_MAX_AFTER and _SIGNATURE_RULE.fullmatch(line):
            return index
        seen_text = seen_text or bool(line)
    return None
