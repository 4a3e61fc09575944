"""The protocol edge: aiosmtpd's protocol classes with our DATA reader (server.py, the
one module that touches aiosmtpd's private members), the thin handlers that translate
between the protocol and the core (handler.py for SMTP/LMTP, submission.py), the
per-transaction state (transaction.py) and the session-level state (sessions.py)."""
