"""Load every rules/*.toml, validate each and all of them together, compile the index.

Errors from all files are gathered and reported together, each with file, key path
and line.  Nothing is returned unless everything is valid: a bad file never
replaces good rules.
"""

from __future__ import annotations

from pathlib import Path

from gateway.errors import ConfigError, ConfigProblem
from gateway.rules.index import RuleIndex, compile_rules, token_prefix
from gateway.rules.schema import DEFAULT_ROLES, RuleFile
from gateway.validation import TomlFile


def load_rules(directory: Path) -> RuleIndex:
    if not directory.is_dir():
        raise ConfigError([ConfigProblem(str(directory), "", None, "rules directory not found")])
    paths = sorted(p for p in directory.glob("*.toml") if not p.name.startswith("."))
    if not paths:
        raise ConfigError([ConfigProblem(str(directory), "", None, "no rule files (*.toml) found")])
    problems: list[ConfigProblem] = []
    parsed: list[tuple[TomlFile, RuleFile]] = []
    for path in paths:
        try:
            toml = TomlFile(path, str(path))
            parsed.append((toml, toml.validate(RuleFile)))
        except ConfigError as exc:
            problems.extend(exc.problems)
    for toml, rf in parsed:
        problems.extend(_check_file(toml, rf))
    problems.extend(_check_across(parsed))
    if problems:
        raise ConfigError(problems)
    return compile_rules([(toml.path, rf) for toml, rf in parsed], tuple(str(p) for p in paths))


def _check_file(toml: TomlFile, rf: RuleFile) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    org = rf.organisation
    if org.gateway_domain in org.domains:
        out.append(toml.problem(("organisation", "gateway_domain"),
                                "must differ from the organisation's own domains (mail to it is routed to the gateway)"))
    roles = set(rf.roles) | set(DEFAULT_ROLES)
    licences = max(1, sum(1 for u in rf.users if u.active))
    if len(org.addresses) > 10 * licences:
        out.append(toml.problem(("organisation", "addresses"),
                                f"at most 10 organisation addresses per licence ({10 * licences} for {licences} active users)"))
    own_domains = set(org.domains)
    dkim_domains: set[str] = set()
    for i, key in enumerate(rf.dkim):
        if key.domain not in own_domains:
            out.append(toml.problem(("dkim", i, "domain"), f"{key.domain} is not one of the organisation's domains"))
        if key.domain in dkim_domains:
            out.append(toml.problem(("dkim", i, "domain"), f"{key.domain} has two keys; keep one"))
        dkim_domains.add(key.domain)
    usernames: set[str] = set()
    for i, account in enumerate(rf.accounts):
        if account.username in usernames:
            out.append(toml.problem(("accounts", i, "username"), f"account {account.username} is listed twice"))
        usernames.add(account.username)
    seen: dict[str, int] = {}
    for i, user in enumerate(rf.users):
        if user.email in seen:
            out.append(toml.problem(("users", i, "email"), f"user {user.email} is listed twice (first at users[{seen[user.email]}])"))
        seen.setdefault(user.email, i)
        if user.role not in roles:
            out.append(toml.problem(("users", i, "role"),
                                    f"unknown role {user.role!r}; declare it under [roles] (known: {', '.join(sorted(roles))})"))
    urls: set[str] = set()
    for i, hook in enumerate(rf.webhooks):
        if hook.url in urls:
            out.append(toml.problem(("webhooks", i, "url"), f"webhook {hook.url} is listed twice; keep one"))
        urls.add(hook.url)
    names: set[str] = set()
    prefixes: dict[str, str] = {}
    for i, pipe in enumerate(rf.pipelines):
        if pipe.name in names:
            out.append(toml.problem(("pipelines", i, "name"), f"pipeline {pipe.name!r} is defined twice"))
        names.add(pipe.name)
        prefix = token_prefix(pipe)
        if prefix in prefixes:
            out.append(toml.problem(("pipelines", i, "token_prefix"),
                                    f"token prefix {prefix!r} is also used by pipeline {prefixes[prefix]!r}"))
        prefixes.setdefault(prefix, pipe.name)
        alias = pipe.alias
        if alias is None:
            continue
        where = ("pipelines", i, "alias")
        if alias.address.rpartition("@")[2] != org.gateway_domain:
            out.append(toml.problem(where + ("address",),
                                    f"alias must be in the gateway domain {org.gateway_domain}"))
        if alias.address.startswith("bcc-"):
            out.append(toml.problem(where + ("address",), "addresses starting with 'bcc-' are reserved for dropboxes"))
        if alias.owner not in seen:
            out.append(toml.problem(where + ("owner",), f"owner {alias.owner} is not a user of this organisation"))
        if alias.reopen:
            # SPEC 3.5: reopen moves a record from one of the chosen closed stages to an open one.
            if not alias.reopen_from:
                out.append(toml.problem(where + ("reopen_from",), "reopen is on: name the closed stages to reopen from"))
            for stage in alias.reopen_from:
                if stage not in pipe.closed_stages:
                    out.append(toml.problem(where + ("reopen_from",), f"{stage!r} is not a closed stage of {pipe.name}"))
            if alias.reopen_to is None:
                out.append(toml.problem(where + ("reopen_to",), "reopen is on: name the open stage to return to"))
            elif alias.reopen_to not in pipe.stages or alias.reopen_to in pipe.closed_stages:
                out.append(toml.problem(where + ("reopen_to",), f"{alias.reopen_to!r} is not an open stage of {pipe.name}"))
    return out


def _check_across(parsed: list[tuple[TomlFile, RuleFile]]) -> list[ConfigProblem]:
    out: list[ConfigProblem] = []
    ids: dict[str, str] = {}
    domains: dict[str, str] = {}
    aliases: dict[str, str] = {}
    logins: dict[str, str] = {}
    for toml, rf in parsed:
        for i, account in enumerate(rf.accounts):
            if account.username in logins:
                out.append(toml.problem(("accounts", i, "username"),
                                        f"login {account.username} is also used in {logins[account.username]}"))
            logins.setdefault(account.username, toml.shown_as)
        org = rf.organisation
        if org.id in ids:
            out.append(toml.problem(("organisation", "id"), f"organisation {org.id!r} is also defined in {ids[org.id]}"))
        ids.setdefault(org.id, toml.shown_as)
        if org.gateway_domain in domains:
            out.append(toml.problem(("organisation", "gateway_domain"),
                                    f"gateway domain {org.gateway_domain} is also used in {domains[org.gateway_domain]}"))
        domains.setdefault(org.gateway_domain, toml.shown_as)
        for i, pipe in enumerate(rf.pipelines):
            if pipe.alias:
                addr = pipe.alias.address
                if addr in aliases:
                    out.append(toml.problem(("pipelines", i, "alias", "address"), f"alias {addr} is also used in {aliases[addr]}"))
                aliases.setdefault(addr, toml.shown_as)
    return out
