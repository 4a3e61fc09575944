"""Every SMTP/LMTP reply the gateway gives, in one catalogue.

Codes follow RFC 5321 section 4.2; enhanced status codes RFC 3463 / RFC 5248.
Handlers return entries from here, never ad-hoc strings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    status: str  # RFC 3463 enhanced status code
    text: str
    # The catalogue name, a bounded metrics label (e.g. "no_such_user").
    reason: str = ""

    def __str__(self) -> str:
        if not self.status:  # a 3xx intermediate reply carries none (RFC 2034 4)
            return f"{self.code} {self.text}"
        return f"{self.code} {self.status} {self.text}"

    def with_text(self, text: str) -> "Reply":
        return Reply(self.code, self.status, text, self.reason)

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def ok(self) -> bool:
        return self.code < 400


class _Catalogue:
    sender_ok = Reply(250, "2.1.0", "Sender OK")
    recipient_ok = Reply(250, "2.1.5", "Recipient OK")
    filed = Reply(250, "2.0.0", "Filed")
    duplicate = Reply(250, "2.0.0", "Already filed")
    dropped = Reply(250, "2.0.0", "Accepted")
    no_such_user = Reply(550, "5.1.1", "No such user here")
    # RCPT to a domain that is not a gateway domain of any organisation: we are no
    # relay (RFC 5321 3.6.2; 5.7.1 "delivery not authorized", RFC 3463 3.8).
    relay_denied = Reply(550, "5.7.1", "Relaying denied: no such domain here")
    # Any command line with a NUL octet (RFC 5321 4.1.1: commands are printable
    # text; a NUL has truncated addresses in C-based software downstream).
    nul_in_command = Reply(501, "5.5.2", "Syntax error: NUL character in command")
    sender_not_allowed = Reply(550, "5.7.1", "Sender is not allowed to file to this address")
    # Issue 16: the organisation's dropbox_requires was not met (and it refuses such mail).
    sender_not_authenticated = Reply(550, "5.7.1", "Sender could not be authenticated")
    held = Reply(250, "2.0.0", "Accepted, held for review")
    too_many_recipients = Reply(452, "4.5.3", "Too many recipients")
    too_big = Reply(552, "5.3.4", "Message too big for system")
    malformed = Reply(554, "5.6.0", "Message content could not be parsed")
    internal_error = Reply(451, "4.3.0", "Temporary internal error, try again later")
    database_unavailable = Reply(451, "4.3.0", "Storage temporarily unavailable, try again later")
    busy = Reply(421, "4.3.2", "Service shutting down, try again later")
    too_many_connections = Reply(421, "4.7.0", "Too many connections, try again later")
    timeout = Reply(421, "4.4.2", "Idle timeout, closing connection")
    quarantined = Reply(250, "2.0.0", "Accepted into quarantine")
    # Submission and relay (issue 4).
    relayed = Reply(250, "2.0.0", "Relayed")
    already_relayed = Reply(250, "2.0.0", "Already relayed")
    relay_unavailable = Reply(451, "4.4.1", "Smarthost unavailable, try again later")
    quota_exhausted = Reply(451, "4.7.1", "Daily sending limit reached")
    from_not_allowed = Reply(550, "5.7.1", "From address not allowed for this account")
    domain_not_verified = Reply(550, "5.7.1", "Sender domain not verified (no DKIM key)")
    # The rules name a DKIM key file that cannot be used: the operator must act, the
    # submitter should retry (RFC 3463 4.3.5 "system incorrectly configured").
    dkim_key_unavailable = Reply(451, "4.3.5", "System not configured: DKIM key unavailable, try again later")
    auth_ok = Reply(235, "2.7.0", "Authentication successful")
    auth_failed = Reply(535, "5.7.8", "Authentication credentials invalid")
    auth_required = Reply(530, "5.7.0", "Authentication required")
    no_such_record = Reply(550, "5.1.0", "Unknown record in X-Gateway-Record")
    bad_sender_syntax = Reply(501, "5.1.7", "Bad sender address syntax")
    bad_recipient_syntax = Reply(501, "5.1.3", "Bad recipient address syntax")
    # DATA (gateway/smtp/server.py replaces aiosmtpd's, and keeps its texts).
    need_recipient = Reply(503, "5.5.1", "Error: need RCPT command")
    data_syntax = Reply(501, "5.5.4", "Syntax: DATA")
    # RFC 2034 4: no enhanced status code on an intermediate (3xx) reply.
    start_data = Reply(354, "", "End data with <CR><LF>.<CR><LF>")


REPLIES = _Catalogue()
for _name, _reply in list(vars(_Catalogue).items()):
    if isinstance(_reply, Reply):
        setattr(_Catalogue, _name, Reply(_reply.code, _reply.status, _reply.text, _name))
