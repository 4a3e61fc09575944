"""What the organisation's own MTA and our own checks say about a received message
(issue 16, items 1 and 5).

Reads
- the ``Authentication-Results`` header fields (RFC 8601; parsed with ``authres``):
  dkim, spf, dmarc, arc ... results as the receiving MTA found them;
- the spam headers of SpamAssassin (``X-Spam-Flag``, ``X-Spam-Score``,
  ``X-Spam-Status``) and rspamd (``X-Spamd-Result``, ``X-Rspamd-Score``), the
  topmost of each kind;
- the ``DKIM-Signature`` header fields, which `verify_dkim` checks itself (dkimpy).

Whom it trusts: only the Authentication-Results fields whose authserv-id is one
the organisation names as its own MTA's.  Everything else in a message can be
forged by whoever sent or relayed it: a field saying ``dkim=pass`` from any
other authserv-id is ignored, however good it looks.  This relies on the MTA
removing copies of its own authserv-id from incoming mail (RFC 8601 section 5.)
and, likewise, on the spam filter replacing the spam headers it writes.

What runs DNS: only `verify_dkim` (the key lookups; dkimpy's resolver unless a
``dnsfunc`` is given).  Everything else here is pure and fast.

Nothing here raises on what a message contains: an unreadable field is skipped,
an unreadable signature is a ``permerror``, an unreadable number is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import authres
import dkim
from dkim.util import parse_tag_value

from gateway.message import AuthResult, ParsedMessage

__all__ = ["REQUIREMENTS", "AuthResult", "SpamVerdict", "as_json", "auth_results", "meets", "spam_verdict",
           "verify_dkim"]

# The requirements an organisation may set for dropbox mail (see `meets`).
REQUIREMENTS = ("none", "dkim_or_spf", "dmarc")

# Our own verification's "authserv-id".
DKIMPY = "dkimpy"


@dataclass(frozen=True)
class SpamVerdict:
    flagged: bool
    score: float | None
    # What decided: "X-Spam-Flag: YES", "X-Spam-Score: 7.3 > 5.0",
    # "X-Spamd-Result: default: False [12.40 / 15.00] > 5.0"; "" when no spam header.
    evidence: str


# ---------------------------------------------------------------- Authentication-Results


def auth_results(parsed: ParsedMessage, authserv_ids: Sequence[str]) -> tuple[AuthResult, ...]:
    """The results of every Authentication-Results field whose authserv-id is in
    ``authserv_ids`` (case-insensitive), in header order (topmost first), then in
    the order each field lists them.  Fields of any other authserv-id, and fields
    authres cannot parse, are skipped.  Never raises."""
    trusted = {_norm_domain(i) for i in authserv_ids if i and i.strip()}
    if not trusted:
        return ()
    found: list[AuthResult] = []
    for name, value in parsed.headers:
        if name != "authentication-results":
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
        except Exception:  # authres raises its own SyntaxError, and anything on odd input
            continue
        source = _norm_domain(header.authserv_id or "")
        if source not in trusted:
            continue
        for result in header.results:
            method = _clean(getattr(result, "method", "") or "").lower()
            verdict = _clean(getattr(result, "result", "") or "").lower()
            if not method or not verdict:
                continue
            props = {(str(p.type).lower(), str(p.name).lower()): _clean(str(p.value or ""))
                     for p in reversed(getattr(result, "properties", None) or [])}  # reversed: the first wins
            found.append(AuthResult(method, verdict, _result_domain(method, props), source))
    return tuple(found)


def _result_domain(method: str, props: dict[tuple[str, str], str]) -> str:
    if method in ("dkim", "domainkeys"):
        return _norm_domain(props.get(("header", "d")) or _after_at(props.get(("header", "i"), "")))
    if method == "spf":
        mailfrom = props.get(("smtp", "mailfrom"), "")
        return _norm_domain(_after_at(mailfrom) if mailfrom else props.get(("smtp", "helo"), ""))
    if method == "dmarc":
        return _norm_domain(props.get(("header", "from"), ""))
    return ""


def _after_at(value: str) -> str:
    """The domain of ``local@domain`` / ``@domain``; a bare domain as it is."""
    return value.rpartition("@")[2]


def _norm_domain(value: str) -> str:
    return _clean(value).strip().strip("<>").rstrip(".").lower()


def _clean(value: str) -> str:
    """Safe for PostgreSQL text and one log line: no NUL or other control characters,
    no lone surrogates."""
    value = re.sub(r"[\x00-\x1f\x7f]", "", value)
    return value.encode("utf-8", "replace").decode("utf-8")


# ---------------------------------------------------------------- DKIM, our own check


class _DnsFailure(Exception):
    """The key lookup raised: kept apart from dkimpy's own exceptions (dkimpy turns
    its DnsTimeoutError into a plain False)."""


def verify_dkim(raw: bytes, dnsfunc: Callable[..., bytes | str | None] | None = None,
                max_signatures: int = 3) -> tuple[AuthResult, ...]:
    """Verify the message's DKIM-Signature fields (topmost first, at most
    ``max_signatures``) with dkimpy: one ``AuthResult("dkim", result, d=, "dkimpy")``
    each, where result is

    - ``pass``: the signature verifies;
    - ``fail``: the key was found but the signature or the body hash does not match;
    - ``permerror``: the signature cannot be read (missing or bad tags), the key
      record is missing or unusable, or the key is too small;
    - ``temperror``: the DNS lookup raised (timeout, no resolver ...).

    No signature: ().  Never raises.

    ``dnsfunc`` is dkimpy's: ``dnsfunc(name: bytes, timeout=5)`` returning the TXT
    record of ``<selector>._domainkey.<domain>.`` (None when there is none); None:
    dkimpy's resolver.

    This does DNS and can block for seconds per signature: the caller runs it in a
    worker thread, never on the event loop.
    """
    if max_signatures <= 0:
        return ()
    lookup = dnsfunc if dnsfunc is not None else dkim.get_txt
    try:
        verifier = dkim.DKIM(raw)
        signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    except Exception:
        # dkimpy cannot read the header section at all: one permerror when it is signed.
        if re.search(rb"(?im)^dkim-signature[ \t]*:", raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]):
            return (AuthResult("dkim", "permerror", "", DKIMPY),)
        return ()
    results: list[AuthResult] = []
    for idx, value in enumerate(signatures[:max_signatures]):
        results.append(AuthResult("dkim", _verify_one(verifier, idx, lookup), _signature_domain(value), DKIMPY))
    return tuple(results)


def _verify_one(verifier: Any, idx: int, lookup: Callable[..., bytes | str | None]) -> str:
    records: list[bytes | str | None] = []  # what the lookup returned (none: not reached)

    def dns(name: bytes, timeout: float = 5) -> bytes | str | None:
        try:
            record = lookup(name, timeout=timeout)
        except Exception as exc:
            raise _DnsFailure(str(exc)) from exc
        records.append(record)
        return record

    try:
        ok = verifier.verify(idx=idx, dnsfunc=dns)
    except _DnsFailure:
        return "temperror"
    except dkim.ValidationError:
        # Before the key lookup: the signature's tags are bad (permerror).  After it:
        # the body hash does not match (fail).
        return "fail" if records else "permerror"
    except Exception:  # MessageFormatError, KeyFormatError (key too small) ... or a dkimpy bug
        return "permerror"
    if ok:
        return "pass"
    if records and _unusable_key(records[-1]):
        return "permerror"  # dkimpy says False when the key record is missing or unreadable
    return "fail"


def _unusable_key(record: bytes | str | None) -> bool:
    try:
        dkim.evaluate_pk(b"", record)
    except Exception:
        return True
    return False


def _signature_domain(value: bytes) -> str:
    try:
        tags = parse_tag_value(value)
        return _norm_domain(tags.get(b"d", b"").decode("utf-8", "replace"))
    except Exception:
        return ""


# ---------------------------------------------------------------- requirements


def meets(results: Sequence[AuthResult], requirement: str, from_domain: str) -> tuple[bool, str]:
    """Whether ``results`` meet an organisation's requirement for dropbox mail, with a
    one-line reason naming the results used:

    - ``none``: always;
    - ``dkim_or_spf``: a dkim pass or an spf pass whose domain is aligned with
      ``from_domain``;
    - ``dmarc``: a dmarc pass for ``from_domain``; when there is no dmarc result at
      all (the MTA does not check DMARC) or only ``dmarc=none`` (the domain publishes
      no DMARC policy), a dkim pass aligned with ``from_domain``.

    Aligned: equal, or one is a subdomain of the other (ends with "." + the other),
    the parent having two labels at least.  A simplification of DMARC's relaxed
    alignment, which compares organisational domains (the Public Suffix List): it
    accepts zylker.example for sales.zylker.example and the reverse, never
    notzylker.example; a public suffix of two labels (co.uk) is not recognised,
    which matters only to whoever controls that suffix's DNS.

    An unknown requirement is not met (fails closed).
    """
    domain = _norm_domain(from_domain or "")
    if requirement == "none":
        return True, "no authentication required"
    if requirement == "dkim_or_spf":
        for result in results:
            if result.method in ("dkim", "spf") and result.result == "pass" and _aligned(result.domain, domain):
                return True, _describe(result)
        used = [r for r in results if r.method in ("dkim", "spf")]
        return False, f"no dkim or spf pass aligned with {domain or '(no From domain)'} ({_describe_all(used)})"
    if requirement == "dmarc":
        dmarc_results = [r for r in results if r.method == "dmarc" and r.result != "none"]
        if dmarc_results:
            for result in dmarc_results:
                if result.result == "pass" and domain and result.domain == domain:
                    return True, _describe(result)
            return False, f"no dmarc pass for {domain or '(no From domain)'} ({_describe_all(dmarc_results)})"
        for result in results:
            if result.method == "dkim" and result.result == "pass" and _aligned(result.domain, domain):
                return True, f"{_describe(result)} (no dmarc result)"
        used = [r for r in results if r.method == "dkim"]
        return False, (f"no dmarc result and no dkim pass aligned with {domain or '(no From domain)'} "
                       f"({_describe_all(used)})")
    return False, f"unknown requirement {requirement!r}"


def _aligned(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    # A single label (a top-level domain) is nobody's organisational domain.
    return ("." in b and a.endswith("." + b)) or ("." in a and b.endswith("." + a))


def _describe(result: AuthResult) -> str:
    domain = f" ({result.domain})" if result.domain else ""
    return f"{result.method}={result.result}{domain} by {result.source}"


def _describe_all(results: Sequence[AuthResult], limit: int = 5) -> str:
    if not results:
        return "no results"
    text = ", ".join(_describe(r) for r in results[:limit])
    return text + (f" and {len(results) - limit} more" if len(results) > limit else "")


# ---------------------------------------------------------------- spam headers

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
# "7.3", "7.3 (+++++++)" (Exim's $spam_score ($spam_bar))
_SCORE = re.compile(rf"\s*({_NUMBER})(?=$|[\s(;,])")
# "Yes, score=7.3 required=5.0 tests=..." (older SpamAssassin: hits=)
_STATUS = re.compile(r"\s*(yes|no)\b", re.I)
_STATUS_SCORE = re.compile(rf"\b(?:score|hits)=({_NUMBER})(?=$|[\s(;,])", re.I)
_STATUS_REQUIRED = re.compile(rf"\brequired=({_NUMBER})(?=$|[\s(;,])", re.I)
# "default: True [12.40 / 15.00]; ..."
_SPAMD = re.compile(rf"\s*([\w-]+)\s*:\s*(true|false)\s*\[\s*({_NUMBER})\s*/\s*({_NUMBER})\s*\]", re.I)


def spam_verdict(parsed: ParsedMessage, review_score: float | None) -> SpamVerdict:
    """What the spam filter's headers say (the topmost header of each kind):
    ``X-Spam-Flag: YES``, ``X-Spam-Status: Yes, ...`` and rspamd's
    ``X-Spamd-Result: default: True [...]`` flag by themselves; a score
    (``X-Spam-Score``, ``X-Spam-Status``'s score=, ``X-Spamd-Result``,
    ``X-Rspamd-Score``) flags when above ``review_score`` (None: scores alone never
    flag).  ``score`` is the one that flagged, else the first found in that order.
    Never raises; unparseable numbers are ignored."""
    flags: list[str] = []  # evidence
    scores: list[tuple[float, str]] = []  # (score, "Header: value as written")

    flag = parsed.header("x-spam-flag")
    if flag is not None and flag.strip().lower() == "yes":
        flags.append(f"X-Spam-Flag: {_clean(flag.strip())}")

    value = parsed.header("x-spam-score")
    if value is not None and (m := _SCORE.match(value)) and (score := _number(m.group(1))) is not None:
        scores.append((score, f"X-Spam-Score: {m.group(1)}"))

    value = parsed.header("x-spam-status")
    if value is not None and (m := _STATUS.match(value)):
        summary = m.group(1)
        sm = _STATUS_SCORE.search(value)
        if sm is not None:
            summary += f", score={sm.group(1)}"
            rm = _STATUS_REQUIRED.search(value)
            if rm is not None:
                summary += f" required={rm.group(1)}"
        if m.group(1).lower() == "yes":
            flags.append(f"X-Spam-Status: {summary}")
        if sm is not None and (score := _number(sm.group(1))) is not None:
            scores.append((score, f"X-Spam-Status: {summary}"))

    value = parsed.header("x-spamd-result")
    if value is not None and (m := _SPAMD.match(value)):
        evidence = f"X-Spamd-Result: {m.group(1)}: {m.group(2)} [{m.group(3)} / {m.group(4)}]"
        if m.group(2).lower() == "true":
            flags.append(evidence)
        if (score := _number(m.group(3))) is not None:
            scores.append((score, evidence))

    value = parsed.header("x-rspamd-score")
    if value is not None and (m := _SCORE.match(value)) and (score := _number(m.group(1))) is not None:
        scores.append((score, f"X-Rspamd-Score: {m.group(1)}"))

    first = scores[0][0] if scores else None
    if flags:
        return SpamVerdict(True, first, flags[0])
    if review_score is not None and math.isfinite(review_score):
        for score, evidence in scores:
            if score > review_score:
                return SpamVerdict(True, score, f"{evidence} > {float(review_score)}")
        if scores:
            return SpamVerdict(False, first, f"{scores[0][1]} <= {float(review_score)}")
    return SpamVerdict(False, first, scores[0][1] if scores else "")


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------- storing


def as_json(results: Sequence[AuthResult]) -> list[dict[str, str]]:
    """As stored with a decision: ``[{"method", "result", "domain", "source"}]``."""
    return [{"method": r.method, "result": r.result, "domain": r.domain, "source": r.source} for r in results]


def authenticate(parsed: ParsedMessage, authserv_ids: Sequence[str], verify: bool = False,
                 dnsfunc: Callable[..., Any] | None = None) -> ParsedMessage:
    """``parsed`` with its ``authentication``: the results of the trusted
    Authentication-Results headers, then (``verify``) our own DKIM verification --
    which does DNS: call it in a worker thread, never on the event loop."""
    results = auth_results(parsed, authserv_ids) if authserv_ids else ()
    if verify:
        results += verify_dkim(parsed.raw, dnsfunc=dnsfunc)
    return replace(parsed, authentication=results) if results else parsed
