"""The compiled rules: lookup tables built once per load, consulted by pure functions.

Built whole from validated rule files, then swapped in as one reference, so a
delivery sees one consistent version of the rules from MAIL to its last reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Literal, Mapping

from gateway.addresses import domain_of
from gateway.rules.schema import Pipeline, RuleFile, SearchOrder


@dataclass(frozen=True)
class UserEntry:
    org_id: str
    email: str
    first_name: str
    last_name: str
    role: str
    active: bool
    dropbox_allowed: bool
    search: SearchOrder
    creates: Literal["lead", "contact"]
    senders: frozenset[str]
    sharing: str
    # SPEC 2.12: addresses and domains whose mail is shared when sharing is "custom".
    share: frozenset[str] = frozenset()
    id: int | None = None

    @property
    def may_use_dropbox(self) -> bool:
        return self.active and self.dropbox_allowed


@dataclass(frozen=True)
class PipelineEntry:
    org_id: str
    name: str
    stages: tuple[str, ...]
    closed_stages: frozenset[str]
    token_prefix: str
    id: int | None = None

    @property
    def first_stage(self) -> str:
        return self.stages[0]


def token_prefix(pipe: Pipeline) -> str:
    """The configured prefix, or the one derived from the pipeline's name."""
    return pipe.token_prefix.upper() if pipe.token_prefix else default_token_prefix(pipe.name)


def default_token_prefix(pipeline_name: str) -> str:
    """The pipeline name in upper case without spaces or punctuation ("R" if nothing is left)."""
    return ("".join(ch for ch in pipeline_name if ch.isalnum()) or "R").upper()


def format_token(fmt: str, prefix: str, record_id: int) -> str:
    return fmt.replace("{prefix}", prefix).replace("{id}", str(record_id))


def record_token(org: "OrgEntry", pipeline: str, record_id: int) -> str:
    """The token of a record, e.g. [#S-42]: the organisation's format with its
    pipeline's prefix (derived from the name for a pipeline no longer in the rules).
    Here, not in gateway.filing, so that commands reading records need not import
    the filing code."""
    entry = org.pipelines.get(pipeline)
    prefix = entry.token_prefix if entry is not None else default_token_prefix(pipeline)
    return format_token(org.record_token, prefix, record_id)


@dataclass(frozen=True)
class AliasEntry:
    org_id: str
    address: str
    display_name: str
    pipeline: str
    owner: str
    tags: tuple[str, ...]
    reopen: bool
    reopen_from: frozenset[str]
    reopen_to: str | None
    accept_from: str = "everyone"  # everyone | contacts | participants (issue 16)
    on_refused: str = "reject"  # reject | review


@dataclass(frozen=True)
class DkimEntry:
    domain: str
    selector: str
    key_path: Path


@dataclass(frozen=True)
class WebhookEntry:
    """A [[webhooks]] entry: where events go, which ones, and where its secret is."""

    url: str
    events: frozenset[str] | None  # None: every type
    secret_env: str | None
    secret_path: Path | None  # secret_file, resolved against the rule file's folder

    @property
    def secret_source(self) -> str:
        return f"environment variable {self.secret_env}" if self.secret_env else f"file {self.secret_path}"


@dataclass(frozen=True)
class LoginEntry:
    """Who may submit outbound mail: a service account or a user with a password."""

    org_id: str
    username: str
    password_hash: str
    mail_class: Literal["individual", "bulk"]
    loopback_only: bool
    kind: Literal["account", "user"]


@dataclass(frozen=True)
class OrgEntry:
    id: str
    name: str
    timezone: str
    plan: str
    edition: str
    domains: frozenset[str]
    gateway_domain: str
    record_token: str
    users: Mapping[str, UserEntry]
    pipelines: Mapping[str, PipelineEntry]
    own_addresses: frozenset[str]
    bulk_addon: int | None = None
    addresses: frozenset[str] = frozenset()
    dkim: Mapping[str, DkimEntry] = field(default_factory=dict)
    # SPEC 2.12: mail with a customer at one of these is seen by its filer only.
    sharing_excluded_domains: frozenset[str] = frozenset()
    # Filled by with_ids(): database id -> user, for the dropbox lookup at RCPT.
    users_by_id: Mapping[int, UserEntry] = field(default_factory=dict)
    # Issue 14: where the organisation's events are POSTed, in the file's order.
    webhooks: tuple[WebhookEntry, ...] = ()
    # Issue 16: what dropbox mail must show of its sender's authenticity, and what
    # happens to mail that does not (refuse | review).
    dropbox_requires: str = "none"
    dropbox_on_fail: str = "refuse"
    alias_refused_text: str = "This address accepts mail from known customers only"

    @property
    def active_users(self) -> int:
        return sum(1 for u in self.users.values() if u.active)

    def may_send_from(self, address: str) -> bool:
        """SPEC 3.8: every active user's address and the organisation's addresses."""
        user = self.users.get(address)
        return (user is not None and user.active) or address in self.addresses

    def is_own_address(self, address: str) -> bool:
        """SPEC 2.6: the organisation's own people, domains and gateway addresses."""
        domain = domain_of(address)
        return (
            address in self.own_addresses
            or domain in self.domains
            or domain == self.gateway_domain
        )


@dataclass(frozen=True)
class RuleIndex:
    orgs: Mapping[str, OrgEntry]
    by_gateway_domain: Mapping[str, str]
    aliases: Mapping[str, AliasEntry]
    files: tuple[str, ...] = ()
    logins: Mapping[str, LoginEntry] = field(default_factory=dict)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def user(self, org_id: str, email: str) -> UserEntry | None:
        org = self.orgs.get(org_id)
        return org.users.get(email) if org else None

    def with_ids(
        self,
        user_ids: Mapping[tuple[str, str], int],
        pipeline_ids: Mapping[tuple[str, str], int],
    ) -> "RuleIndex":
        """The same rules with database ids filled in (after syncing to the database)."""
        orgs = {}
        for org in self.orgs.values():
            users = {e: replace(u, id=user_ids.get((org.id, e))) for e, u in org.users.items()}
            pipes = {n: replace(p, id=pipeline_ids.get((org.id, n))) for n, p in org.pipelines.items()}
            by_id = {u.id: u for u in users.values() if u.id is not None}
            orgs[org.id] = replace(org, users=MappingProxyType(users), pipelines=MappingProxyType(pipes),
                                   users_by_id=MappingProxyType(by_id))
        return replace(self, orgs=MappingProxyType(orgs))


def compile_rules(files: list[tuple[Path, RuleFile]], names: tuple[str, ...] = ()) -> RuleIndex:
    orgs: dict[str, OrgEntry] = {}
    by_domain: dict[str, str] = {}
    aliases: dict[str, AliasEntry] = {}
    logins: dict[str, LoginEntry] = {}
    for path, rf in files:
        o = rf.organisation
        for a in rf.accounts:
            logins[a.username] = LoginEntry(o.id, a.username, a.password_hash, a.mail_class, a.loopback_only, "account")
        for u in rf.users:
            if u.password_hash and u.email not in logins:
                logins[u.email] = LoginEntry(o.id, u.email, u.password_hash, "individual", False, "user")
        dkim = {
            k.domain: DkimEntry(k.domain, k.selector, (path.parent / k.key_file).resolve())
            for k in rf.dkim
        }
        users = {
            u.email: UserEntry(
                org_id=o.id,
                email=u.email,
                first_name=u.first_name,
                last_name=u.last_name,
                role=u.role,
                active=u.active,
                dropbox_allowed=rf.role_allows_dropbox(u.role),
                search=u.dropbox.search,
                creates=u.dropbox.creates,
                senders=frozenset(u.dropbox.senders or [u.email]),
                sharing=u.dropbox.sharing,
                share=frozenset(u.dropbox.share),
            )
            for u in rf.users
        }
        pipelines = {
            p.name: PipelineEntry(o.id, p.name, tuple(p.stages), frozenset(p.closed_stages), token_prefix(p))
            for p in rf.pipelines
        }
        own = set(users)
        for u in users.values():
            own |= u.senders
        for p in rf.pipelines:
            if p.alias:
                a = p.alias
                aliases[a.address] = AliasEntry(
                    org_id=o.id,
                    address=a.address,
                    display_name=a.display_name,
                    pipeline=p.name,
                    owner=a.owner,
                    tags=tuple(a.tags),
                    reopen=a.reopen,
                    reopen_from=frozenset(a.reopen_from),
                    reopen_to=a.reopen_to,
                    accept_from=a.accept_from,
                    on_refused=a.on_refused,
                )
                own.add(a.address)
        orgs[o.id] = OrgEntry(
            id=o.id,
            name=o.name or o.id,
            timezone=o.timezone,
            plan=o.plan,
            edition=o.edition,
            domains=frozenset(o.domains),
            gateway_domain=o.gateway_domain,
            record_token=o.record_token,
            users=MappingProxyType(users),
            pipelines=MappingProxyType(pipelines),
            own_addresses=frozenset(own),
            bulk_addon=o.bulk_addon,
            addresses=frozenset(o.addresses),
            dkim=MappingProxyType(dkim),
            sharing_excluded_domains=frozenset(o.sharing_excluded_domains),
            dropbox_requires=o.dropbox_requires,
            dropbox_on_fail=o.dropbox_on_fail,
            alias_refused_text=o.alias_refused_text,
            webhooks=tuple(
                WebhookEntry(w.url, frozenset(w.events) if w.events is not None else None, w.secret_env,
                             (path.parent / w.secret_file).resolve() if w.secret_file else None)
                for w in rf.webhooks),
        )
        by_domain[o.gateway_domain] = o.id
    return RuleIndex(MappingProxyType(orgs), MappingProxyType(by_domain), MappingProxyType(aliases), names,
                     logins=MappingProxyType(logins))
