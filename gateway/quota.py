"""Daily sending quota: a token bucket per organisation and class, kept in the database.

SPEC 4: individual mail 50 x active users on the free plan (at most 4 users count),
300 x active users on a paid plan; bulk mail (also automatic mail, workflow,
auto-responses, macros and scheduled bulk) 250 / 500 / 1000 by edition, raised by
a paid add-on to at most 2,250.  Every recipient is one token.  A day runs from
00:00 to 24:00 in the organisation's time zone -- 23 or 25 hours on DST days --
so the bucket is keyed by the local date and refills when that date changes.

Exact across gateway processes: a token is taken by one conditional UPDATE
(used + n <= limit) on the bucket row (gateway/store/quota.py: take); a row lock
(PostgreSQL) or the write lock (SQLite) orders concurrent takers, so together they
never exceed the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine

from gateway import events
from gateway.rules.index import OrgEntry
from gateway.store import events as store_events, quota as store_quota
from gateway.store.sql import now

MailClass = Literal["individual", "bulk"]
CLASSES: tuple[MailClass, ...] = ("individual", "bulk")

BULK_BY_EDITION = {"standard": 250, "professional": 500, "enterprise": 1000}
BULK_MAX = 2250
FREE_PLAN_MAX_USERS = 4

# Header a submitter may set to say what kind of mail this is (removed before relay).
CLASS_HEADER = "X-Gateway-Class"
_CLASS_NAMES: dict[str, MailClass] = {
    "individual": "individual",
    "bulk": "bulk", "mass": "bulk", "automatic": "bulk", "workflow": "bulk",
    "auto-response": "bulk", "autoresponse": "bulk", "macro": "bulk", "scheduled": "bulk",
    "scheduled-bulk": "bulk",
}


def class_from_header(value: str | None) -> MailClass | None:
    if not value:
        return None
    return _CLASS_NAMES.get(value.strip().lower())


def limit_for(org: OrgEntry, mail_class: MailClass) -> int:
    if mail_class == "individual":
        users = org.active_users
        if org.plan == "free":
            return 50 * min(users, FREE_PLAN_MAX_USERS)
        return 300 * users
    return min(BULK_BY_EDITION.get(org.edition, 250) + (org.bulk_addon or 0), BULK_MAX)


def local_day(tz: str, at: datetime | None = None) -> date:
    return (at or now()).astimezone(ZoneInfo(tz)).date()


def next_reset(tz: str, at: datetime | None = None) -> datetime:
    """The next local midnight, as an aware datetime in the organisation's zone."""
    zone = ZoneInfo(tz)
    day = local_day(tz, at)
    midnight = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    # Round-trip through UTC settles a midnight that falls in a DST gap.
    return midnight.astimezone(timezone.utc).astimezone(zone)


def reset_text(tz: str, at: datetime | None = None) -> str:
    reset = next_reset(tz, at)
    return f"{reset:%Y-%m-%d %H:%M} {reset.tzname()} ({tz}, UTC{reset:%z})"


@dataclass(frozen=True)
class Reservation:
    org_id: str
    mail_class: MailClass
    day: date
    count: int


def reserve(conn: Connection, org: OrgEntry, mail_class: MailClass, count: int = 1,
            at: datetime | None = None) -> Reservation | None:
    """Take `count` tokens, all or none. None when the bucket has not enough left."""
    day = local_day(org.timezone, at)
    limit = limit_for(org, mail_class)
    store_quota.ensure_bucket(conn, org.id, mail_class, day, limit)
    taken = store_quota.take(conn, org.id, mail_class, day, count, limit)
    if taken is None:
        if store_quota.first_refusal(conn, org.id, mail_class, day):
            # quota.exhausted, once per organisation, class and day, with the refusal.
            store_events.append(conn, org.id, [events.quota_exhausted(
                mail_class, limit, day.isoformat(), next_reset(org.timezone, at).astimezone(timezone.utc)
                .isoformat().replace("+00:00", "Z"))])
        return None
    return Reservation(org.id, mail_class, day, count)


def release(conn: Connection, reservation: Reservation) -> None:
    """Give tokens back (transaction or relay failed), to the day they were taken from."""
    store_quota.give_back(conn, reservation.org_id, reservation.mail_class, reservation.day, reservation.count)


def status(engine: Engine, org: OrgEntry, at: datetime | None = None) -> dict[str, object]:
    with engine.connect() as conn:
        return status_on(conn, org, at)


def status_on(conn: Connection, org: OrgEntry, at: datetime | None = None) -> dict[str, object]:
    """Per class: limit, used, remaining; the local day and the next reset."""
    day = local_day(org.timezone, at)
    used = store_quota.used(conn, org.id, day)
    reset = next_reset(org.timezone, at)
    classes = {}
    for mail_class in CLASSES:
        limit = limit_for(org, mail_class)
        taken = int(used.get(mail_class, 0))
        classes[mail_class] = {
            "limit": limit,
            "used": taken,
            "remaining": max(limit - taken, 0),
        }
    return {
        "org": org.id,
        "timezone": org.timezone,
        "plan": org.plan,
        "edition": org.edition,
        "active_users": org.active_users,
        "day": day.isoformat(),
        "next_reset_local": reset.isoformat(),
        "next_reset_utc": reset.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "classes": classes,
    }


def render_status(report: list[dict[str, Any]]) -> str:
    """`gateway quota status` as text: status() of each organisation, a block each."""
    lines = []
    for r in report:
        lines.append(f"{r['org']}  ({r['plan']}, {r['edition']}, {r['active_users']} active users, {r['timezone']})")
        lines.append(f"  day {r['day']}; next reset {r['next_reset_local']} local = {r['next_reset_utc']}")
        for name, c in r["classes"].items():
            lines.append(f"  {name:<11} limit {c['limit']:>6}  used {c['used']:>6}  remaining {c['remaining']:>6}")
    return "\n".join(lines)
