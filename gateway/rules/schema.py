"""The schema of a rule file: one organisation per file in rules/.

Administrators edit these; they are validated data, never code.
"""

from __future__ import annotations

import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.addresses import looks_like_address, normalise, normalise_domain

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")

# SPEC 2.1: by default administrator and standard roles have the dropbox permission.
DEFAULT_ROLES: dict[str, bool] = {"administrator": True, "standard": True}

SearchOrder = Literal["contacts", "leads", "contacts_then_leads"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    value = normalise(value)
    if not looks_like_address(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value


def _domain(value: str) -> str:
    value = normalise_domain(value)  # IDNA 2008 / UTS 46, as addresses are
    if not _DOMAIN.match(value):
        raise ValueError(f"not a domain name: {value!r}")
    return value


def _distinct(values: list[str], what: str) -> list[str]:
    """The normalised entries of a list, refused when two are the same."""
    if len(set(values)) != len(values):
        raise ValueError(f"{what} repeat")
    return values


class Role(_Strict):
    dropbox: bool = False


class Dropbox(_Strict):
    # SPEC 2.5: contacts only / leads only / contacts then leads.
    search: SearchOrder = "contacts_then_leads"
    # What to create when nothing matches; only a choice for contacts_then_leads.
    create: Literal["lead", "contact"] | None = None
    # SPEC 2.4: up to 5 business sender addresses; empty means the user's own address.
    senders: list[str] = Field(default_factory=list, max_length=5)
    # SPEC 2.12: who else may see the mail this user files.
    sharing: Literal["private", "custom", "public"] = "private"
    # SPEC 2.12, sharing = "custom": the customers whose mail is shared, each an address
    # (charless@zillum.com) or a domain (zillum.com: every address at it, not subdomains).
    share: list[str] = Field(default_factory=list, max_length=100)

    @field_validator("senders")
    @classmethod
    def _senders(cls, value: list[str]) -> list[str]:
        return _distinct([_address(v) for v in value], "sender addresses")

    @field_validator("share")
    @classmethod
    def _share(cls, value: list[str]) -> list[str]:
        return _distinct([_address(v) if "@" in v else _domain(v) for v in value], "share entries")

    @model_validator(mode="after")
    def _create_matches_search(self) -> "Dropbox":
        implied = {"contacts": "contact", "leads": "lead"}.get(self.search)
        if implied and self.create not in (None, implied):
            raise ValueError(f"search = {self.search!r} can only create a {implied}")
        return self

    @property
    def creates(self) -> Literal["lead", "contact"]:
        return self.create or {"contacts": "contact", "leads": "lead"}.get(self.search, "lead")  # type: ignore[return-value]


def _password_hash(value: str | None) -> str | None:
    from gateway.passwords import is_valid_hash

    if value is not None and not is_valid_hash(value):
        raise ValueError("not a password hash: use `gateway passwd` to make one (plain passwords are refused)")
    return value


class User(_Strict):
    email: str
    first_name: str = ""
    last_name: str = ""
    role: str
    active: bool = True
    dropbox: Dropbox = Dropbox()
    # Lets the user submit mail through the gateway themselves (scrypt hash).
    password_hash: str | None = None

    _hash = field_validator("password_hash")(lambda cls, v: _password_hash(v))

    _email = field_validator("email")(lambda cls, v: _address(v))


class Alias(_Strict):
    address: str
    display_name: str = ""
    owner: str
    tags: list[str] = Field(default_factory=list)
    reopen: bool = False
    reopen_from: list[str] = Field(default_factory=list)
    reopen_to: str | None = None
    # Issue 16: whose mail the alias takes -- everyone; new records only from existing
    # contacts (replies from a record's participants still join it); or only replies
    # from participants (no new records).  Refused mail gets 550 5.7.1 with the
    # organisation's alias_refused_text, or is held for review.
    accept_from: Literal["everyone", "contacts", "participants"] = "everyone"
    on_refused: Literal["reject", "review"] = "reject"

    _address = field_validator("address", "owner")(lambda cls, v: _address(v))


class Pipeline(_Strict):
    name: str = Field(min_length=1, max_length=100)
    stages: list[str] = Field(min_length=1)
    closed_stages: list[str] = Field(default_factory=list)
    # Goes into the record token of outbound subjects, e.g. "S" in [#S-42].
    token_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,10}$")
    # SPEC 3.1: at most one alias per pipeline (a table, not an array of them).
    alias: Alias | None = None

    @model_validator(mode="after")
    def _stages(self) -> "Pipeline":
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("stage names repeat")
        unknown = [s for s in self.closed_stages if s not in self.stages]
        if unknown:
            raise ValueError(f"closed_stages names unknown stages: {', '.join(unknown)}")
        if self.stages[0] in self.closed_stages:
            raise ValueError("the first stage (where new records start) must be open")
        return self


class Dkim(_Strict):
    """A verified sending domain: mail From this domain is signed with this key."""

    domain: str
    selector: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # PEM private key; relative to this rule file's folder. Never commit it:
    # `gateway dkim keygen DOMAIN --selector S` writes it.
    key_file: str

    _domain = field_validator("domain")(lambda cls, v: _domain(v))


class Account(_Strict):
    """A submission account, e.g. the CRM application (SPEC 4)."""

    username: str
    password_hash: str
    # Class its mail counts against (SPEC 4.3): individual, or bulk for automatic
    # mail, workflow, macros and scheduled bulk. A header can override per message.
    mail_class: Literal["individual", "bulk"] = Field("individual", alias="class")
    # Accept this account only from loopback clients (the demo's accounts).
    loopback_only: bool = False

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _username = field_validator("username")(lambda cls, v: _address(v))
    _hash = field_validator("password_hash")(lambda cls, v: _password_hash(v))


_LOOPBACK_NAMES = ("localhost", "localhost.")


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8, ::1
    except ValueError:
        return False


class Webhook(_Strict):
    """An endpoint the organisation's events are POSTed to (issue 14), signed as the
    Standard Webhooks specification says; the secret is named, never written here."""

    url: str = Field(max_length=2000)
    # Event types sent (default: every type).
    events: list[str] | None = None
    # The signing secret ("whsec_" + base64): in this environment variable, or in this
    # file (relative to this rule file's folder).  Exactly one of the two.
    secret_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
    secret_file: str | None = Field(None, min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            host = parts.hostname or ""
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from exc
        if parts.scheme not in ("https", "http") or not host:
            raise ValueError("must be an https:// URL")
        # Plain http only to this machine (tests, local consumers): events carry mail.
        if parts.scheme == "http" and not _is_loopback(host):
            raise ValueError("must be https:// (http:// only for loopback: 127.0.0.1, ::1, localhost)")
        if parts.fragment:
            raise ValueError("a URL with a #fragment is not sent anywhere: remove it")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        from gateway.events import TYPES  # here: gateway.events imports the rules

        if value is None:
            return None
        unknown = [v for v in value if v not in TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(map(repr, unknown))} (known: {', '.join(TYPES)})")
        if not value:
            raise ValueError("name at least one event type (leave events out for every type)")
        return _distinct(value, "event types")

    @model_validator(mode="after")
    def _one_secret(self) -> "Webhook":
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give exactly one of secret_env (an environment variable's name) or secret_file "
                             "(a file holding the secret); never the secret itself")
        return self


class Organisation(_Strict):
    id: str
    name: str = ""
    timezone: str = "UTC"
    plan: Literal["free", "paid"] = "paid"
    edition: Literal["standard", "professional", "enterprise"] = "standard"
    domains: list[str] = Field(default_factory=list)
    gateway_domain: str
    # SPEC 4.2: a paid add-on raises the daily bulk limit, to at most 2,250.
    bulk_addon: int | None = Field(None, ge=0, le=2250)
    # Organisation addresses (e.g. support@) allowed as From of outbound mail,
    # besides every active user's address; up to 10 per licence (SPEC 3.8).
    addresses: list[str] = Field(default_factory=list)
    # Record token put in the subject of outbound replies; {prefix} is the
    # pipeline's token_prefix, {id} the record id.
    record_token: str = "[#{prefix}-{id}]"
    # SPEC 2.12: mail with a customer at one of these domains is seen by its filer only,
    # whatever the filer's sharing setting.
    sharing_excluded_domains: list[str] = Field(default_factory=list, max_length=100)
    # Issue 16: what dropbox mail must show of its sender's authenticity -- the results
    # of the organisation's own MTA (Authentication-Results of gateway.toml's [trust]
    # authserv_ids) or of our own DKIM check: nothing, a DKIM or SPF pass aligned with
    # the From domain, or a DMARC pass.  Mail that fails is refused (550 5.7.1) or held
    # for review (`gateway review`).
    dropbox_requires: Literal["none", "dkim_or_spf", "dmarc"] = "none"
    dropbox_on_fail: Literal["refuse", "review"] = "refuse"
    # The text of the 550 5.7.1 an alias gives the mail its accept_from refuses (the
    # sender's own MTA writes the bounce with it: no backscatter from us).
    alias_refused_text: str = Field("This address accepts mail from known customers only", min_length=1,
                                    max_length=200, pattern=r"^[\x20-\x7e]+$")

    @field_validator("record_token")
    @classmethod
    def _token(cls, value: str) -> str:
        if "{id}" not in value or "{prefix}" not in value:
            raise ValueError("must contain {prefix} and {id}")
        stripped = value.replace("{id}", "").replace("{prefix}", "")
        if "{" in stripped or "}" in stripped or not stripped.strip():
            raise ValueError("only {prefix} and {id} may be placeholders, with some fixed text around them")
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _SLUG.match(value):
            raise ValueError("use lower-case letters, digits, '-' and '_' (at most 63)")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    _domains = field_validator("domains", mode="after")(lambda cls, v: [_domain(d) for d in v])
    _addresses = field_validator("addresses", mode="after")(lambda cls, v: [_address(a) for a in v])
    _gw = field_validator("gateway_domain")(lambda cls, v: _domain(v))

    @field_validator("sharing_excluded_domains", mode="after")
    @classmethod
    def _excluded(cls, value: list[str]) -> list[str]:
        return _distinct([_domain(d) for d in value], "domains")


class RuleFile(_Strict):
    organisation: Organisation
    roles: dict[str, Role] = Field(default_factory=dict)
    users: list[User] = Field(default_factory=list)
    pipelines: list[Pipeline] = Field(default_factory=list)
    dkim: list[Dkim] = Field(default_factory=list)
    accounts: list[Account] = Field(default_factory=list)
    webhooks: list[Webhook] = Field(default_factory=list, max_length=20)

    def role_allows_dropbox(self, role: str) -> bool:
        if role in self.roles:
            return self.roles[role].dropbox
        return DEFAULT_ROLES.get(role, False)
