"""Webhook deliveries (issue 14): the endpoints of the rules, the events handed to
each, who sends what when.

An endpoint's ``cursor`` is the last seq of its organisation's feed handed to it.
``take()`` runs under the endpoint row's lock (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL: another process busy with the endpoint is skipped, not waited for;
SQLite has one writer anyway), so of several processes one at a time hands out the
endpoint's new events and takes its due deliveries:

- fan-out: one ``pending`` delivery per wanted event after the cursor, the cursor
  moved to the last seq read (unwanted types are passed over);
- claim: due deliveries, in seq order, at most ``batch`` leased at once (the claiming
  process sends them ``concurrency`` at a time), none while an earlier delivery of
  the same record is still pending (a record's events arrive in order); each gets
  ``lease_until`` -- long enough for the whole batch to be sent -- (no other process
  takes it until then: after a crash the lease runs out and it is sent again -- at
  least once) and one more attempt.

``record_many()`` writes an attempt's outcome only if the claim is still the one
that sent it (same attempt count, still pending)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, NamedTuple, Sequence

from sqlalchemy import (Connection, Integer, Text, and_, bindparam, case, cast, exists, func, insert, or_,
                        select, update)

from gateway.rules.index import RuleIndex
from gateway.store import events as store_events
from gateway.store import models as m
from gateway.store.prepared import PerDialect, Prepared
from gateway.store.sql import insert_for, now

_ENDPOINTS, _DELIVERIES, _EVENTS = m.WebhookEndpoint.__table__, m.WebhookDelivery.__table__, m.Event.__table__
_COUNTERS = m.EventCounter.__table__
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

# Events read per endpoint per take (one short transaction).
FAN_OUT_BATCH = 500


class Endpoint(NamedTuple):
    id: int
    org_id: str
    url: str


class Claim(NamedTuple):
    """A delivery taken for one attempt."""

    delivery_id: int
    endpoint_id: int
    org_id: str
    seq: int
    attempts: int  # counting this one
    type: str
    created_at: datetime
    data: str  # the event's data as its JSON text


class Taken(NamedTuple):
    claims: list[Claim]
    more: bool  # the fan-out stopped at FAN_OUT_BATCH: take again soon


# --- the rules' endpoints ----------------------------------------------------------------

def sync_endpoints(conn: Connection, index: RuleIndex) -> None:
    """The rules' [[webhooks]] as endpoint rows, in the caller's transaction.  A new (or
    returning) endpoint starts at its organisation's current feed head: it is told
    what happens from now on, not the past.  Endpoints that left the rules stay
    (with their deliveries, for `gateway webhooks list`) but are inactive."""
    rows = {(r.org_id, r.url): r for r in conn.execute(
        select(_ENDPOINTS.c.id, _ENDPOINTS.c.org_id, _ENDPOINTS.c.url, _ENDPOINTS.c.events, _ENDPOINTS.c.active))}
    named: set[tuple[str, str]] = set()
    for org in index.orgs.values():
        for hook in org.webhooks:
            named.add((org.id, hook.url))
            wanted = sorted(hook.events) if hook.events is not None else None
            row = rows.get((org.id, hook.url))
            if row is None:
                conn.execute(insert_for(conn, _ENDPOINTS).values(
                    org_id=org.id, url=hook.url, events=wanted, active=True,
                    cursor=store_events.head(conn, org.id), created_at=now(),
                ).on_conflict_do_nothing(index_elements=["org_id", "url"]))
            elif not row.active:
                conn.execute(update(_ENDPOINTS).where(_ENDPOINTS.c.id == row.id).values(
                    active=True, events=wanted, cursor=store_events.head(conn, org.id)))
            elif row.events != wanted:
                conn.execute(update(_ENDPOINTS).where(_ENDPOINTS.c.id == row.id).values(events=wanted))
    for key, row in rows.items():
        if key not in named and row.active:
            conn.execute(update(_ENDPOINTS).where(_ENDPOINTS.c.id == row.id).values(active=False))


def active_endpoints(conn: Connection) -> list[Endpoint]:
    query = select(_ENDPOINTS.c.id, _ENDPOINTS.c.org_id, _ENDPOINTS.c.url).where(_ENDPOINTS.c.active.is_(True))
    return [Endpoint(*r) for r in conn.execute(query.order_by(_ENDPOINTS.c.id))]


# --- the daemon's passes -------------------------------------------------------------------

def endpoints_with_work(conn: Connection, probe_seconds: float) -> list[Endpoint]:
    """Active endpoints with events not yet handed to them, or deliveries due (a failing
    endpoint: only once ``probe_seconds`` passed since its last failure): the only ones
    a pass takes (a read, so a pass with nothing to do writes nothing)."""
    e, d, c = _ENDPOINTS, _DELIVERIES, _COUNTERS
    at = now()
    behind = exists().where(c.c.org_id == e.c.org_id, c.c.last > e.c.cursor)
    due = exists().where(d.c.endpoint_id == e.c.id, d.c.status == PENDING, d.c.next_attempt_at <= at,
                         or_(d.c.lease_until.is_(None), d.c.lease_until <= at))
    query = select(e.c.id, e.c.org_id, e.c.url).where(
        e.c.active.is_(True), or_(behind, and_(due, ~_waiting_to_probe(e, at, probe_seconds))))
    return [Endpoint(*r) for r in conn.execute(query.order_by(e.c.id))]


def _failing(e: Any) -> Any:
    """Its last attempt failed (no success since)."""
    return and_(e.c.last_error_at.is_not(None),
                or_(e.c.last_success_at.is_(None), e.c.last_error_at > e.c.last_success_at))


def _waiting_to_probe(e: Any, at: datetime, probe_seconds: float) -> Any:
    """Failing, and its last failure less than ``probe_seconds`` ago."""
    return and_(_failing(e), e.c.last_error_at > at - timedelta(seconds=probe_seconds))


def take(conn: Connection, endpoint_id: int, concurrency: int, batch: int, attempt_seconds: float,
         margin_seconds: float, probe_seconds: float) -> Taken | None:
    """Fan out the endpoint's new events and claim up to ``batch`` due deliveries, to be
    sent ``concurrency`` at a time, each within ``attempt_seconds`` (``batch`` 0: fan
    out only); None if another process holds the endpoint.  The caller commits.  The
    leases end ``margin_seconds`` after the last attempt could.  A failing endpoint
    gets one delivery, and only ``probe_seconds`` after its last failure."""
    e = _ENDPOINTS
    at = now()
    endpoint = conn.execute(
        select(e.c.org_id, e.c.cursor, e.c.events, e.c.active, _failing(e).label("failing"),
               _waiting_to_probe(e, at, probe_seconds).label("waiting"))
        .where(e.c.id == endpoint_id).with_for_update(skip_locked=True)).first()
    if endpoint is None or not endpoint.active:
        return None
    new = conn.execute(
        select(_EVENTS.c.id, _EVENTS.c.seq, _EVENTS.c.type, _EVENTS.c.record_id)
        .where(_EVENTS.c.org_id == endpoint.org_id, _EVENTS.c.seq > endpoint.cursor)
        .order_by(_EVENTS.c.seq).limit(FAN_OUT_BATCH)).all()
    if new:
        wanted = set(endpoint.events) if endpoint.events is not None else None
        rows = [{"org_id": endpoint.org_id, "endpoint_id": endpoint_id, "event_id": e.id, "seq": e.seq,
                 "record_id": e.record_id, "status": PENDING, "attempts": 0, "next_attempt_at": at,
                 "updated_at": at} for e in new if wanted is None or e.type in wanted]
        if rows:
            _fan_out(conn).run_many(conn, rows)  # the driver's executemany: hundreds per pass
        conn.execute(update(_ENDPOINTS).where(_ENDPOINTS.c.id == endpoint_id).values(cursor=new[-1].seq))
    if batch > 0 and endpoint.failing:
        # Failing (its last attempt failed): one attempt probes it, every probe_seconds
        # (the schedule's first wait), so a dead endpoint's backlog costs one request
        # per wait, not a burst per retry wave nor one per pass; the first success
        # gives it its whole batch back.
        concurrency, batch = 1, 0 if endpoint.waiting else 1
    lease = (concurrency, attempt_seconds, margin_seconds)
    return Taken(_claim(conn, endpoint_id, batch, lease, at) if batch > 0 else [], len(new) == FAN_OUT_BATCH)


_fan_out = PerDialect(lambda conn: Prepared(insert(_DELIVERIES), conn.dialect, (
    "org_id", "endpoint_id", "event_id", "seq", "record_id", "status", "attempts", "next_attempt_at", "updated_at")))


def _claim(conn: Connection, endpoint_id: int, batch: int, lease: tuple[int, float, float],
           at: datetime) -> list[Claim]:
    """Two statements, built once (a pass runs them for every endpoint): the count of
    attempts leased, then the due deliveries with their events."""
    d = _DELIVERIES
    leased = conn.execute(_LEASED, {"endpoint_id": endpoint_id, "at": at}).scalar_one()
    room = batch - leased
    if room <= 0:
        return []
    query = _DUE_LOCKED if conn.dialect.name == "postgresql" else _DUE
    due = conn.execute(query, {"endpoint_id": endpoint_id, "at": at, "room": room}).all()
    if not due:
        return []
    # Long enough for every attempt leased to the endpoint, ``concurrency`` at a time.
    concurrency, attempt_seconds, margin_seconds = lease
    rounds = -(-(leased + len(due)) // concurrency)
    lease_until = at + timedelta(seconds=attempt_seconds * rounds + margin_seconds)
    conn.execute(update(d).where(d.c.id.in_([r.id for r in due]))
                 .values(attempts=d.c.attempts + 1, lease_until=lease_until, updated_at=at))
    return [Claim(r.id, endpoint_id, r.org_id, r.seq, r.attempts + 1, r.type, r.created_at, r.data) for r in due]


def _due_query() -> Any:
    d, e = _DELIVERIES, _EVENTS
    earlier = d.alias("earlier")
    at = bindparam("at", type_=d.c.next_attempt_at.type)
    # The data as its JSON text (the body is built around it, nothing decoded).
    return (select(d.c.id, d.c.seq, d.c.attempts, e.c.org_id, e.c.type, e.c.created_at, cast(e.c.data, Text).label("data"))
            .select_from(d.join(e, e.c.id == d.c.event_id))
            .where(d.c.endpoint_id == bindparam("endpoint_id"), d.c.status == PENDING, d.c.next_attempt_at <= at,
                   or_(d.c.lease_until.is_(None), d.c.lease_until <= at),
                   # A record's events in order: none while an earlier one waits or is in flight.
                   or_(d.c.record_id.is_(None),
                       ~exists().where(earlier.c.endpoint_id == d.c.endpoint_id,
                                       earlier.c.record_id == d.c.record_id, earlier.c.status == PENDING,
                                       earlier.c.seq < d.c.seq)))
            # The due index's order (seq order within a pass's hand-out): no sort of a
            # large backlog per pass.
            .order_by(d.c.next_attempt_at, d.c.id).limit(bindparam("room", type_=Integer)))


_DUE = _due_query()
# PostgreSQL: rows another process is claiming are passed over, not waited for.
_DUE_LOCKED = _DUE.with_for_update(of=_DELIVERIES, skip_locked=True)
_LEASED = select(func.count()).select_from(_DELIVERIES).where(
    _DELIVERIES.c.endpoint_id == bindparam("endpoint_id"), _DELIVERIES.c.status == PENDING,
    _DELIVERIES.c.lease_until > bindparam("at", type_=_DELIVERIES.c.lease_until.type))


def _still_ours(claim: Claim) -> Any:
    d = _DELIVERIES
    return and_(d.c.id == claim.delivery_id, d.c.status == PENDING, d.c.attempts == claim.attempts)


def record_many(conn: Connection, outcomes: Sequence[tuple[Claim, int | None, str | None]],
                retry_seconds: Sequence[float]) -> list[str | None]:
    """Attempts' outcomes, in one transaction: each ``delivered`` (no error), ``retry``
    (pending again after the schedule's wait) or ``failed`` (no retry left; kept); None
    where the claim was lost meanwhile (its lease ran out and another process took it:
    written only if the delivery is still pending with the same attempt count).

    Outcomes alike (same new status, wait, answer, error, attempt count: a healthy
    endpoint's batch is one group) are one UPDATE, not one per event -- on PostgreSQL
    each statement is a round trip.  If a group's UPDATE changed fewer rows than it
    has, the rows it did change are the ones stamped with this call's time."""
    at = now()
    d, e = _DELIVERIES, _ENDPOINTS
    groups: dict[tuple[Any, ...], list[int]] = {}
    planned: list[str] = []  # each outcome's, if its claim is still held
    for i, (claim, status, error) in enumerate(outcomes):
        next_at = None
        if error is None:
            outcome, new_status = DELIVERED, DELIVERED
        elif claim.attempts <= len(retry_seconds):
            outcome, new_status = "retry", PENDING
            next_at = at + timedelta(seconds=retry_seconds[claim.attempts - 1])
        else:
            outcome, new_status = FAILED, FAILED
        key = (new_status, next_at, status, error, claim.attempts)
        groups.setdefault(key, []).append(i)
        planned.append(outcome)
    done: set[int] = set()
    for (new_status, next_at, status, error, attempts), members in groups.items():
        ids = [outcomes[i][0].delivery_id for i in members]
        values: dict[str, Any] = {"status": new_status, "lease_until": None, "last_status": status,
                                  "last_error": error, "updated_at": at}
        if next_at is not None:
            values["next_attempt_at"] = next_at
        changed = conn.execute(update(d).where(d.c.id.in_(ids), d.c.status == PENDING, d.c.attempts == attempts)
                               .values(**values)).rowcount
        if changed == len(ids):
            done.update(ids)
        elif changed:
            done.update(conn.execute(select(d.c.id).where(d.c.id.in_(ids), d.c.updated_at == at,
                                                          d.c.attempts == attempts)).scalars())
    results: list[str | None] = []
    succeeded: set[int] = set()
    errors: dict[int, str] = {}
    for (claim, _status, error), outcome in zip(outcomes, planned):
        ours = claim.delivery_id in done
        results.append(outcome if ours else None)
        if ours and error is None:
            succeeded.add(claim.endpoint_id)
        elif ours:
            errors[claim.endpoint_id] = error  # type: ignore[assignment]
    for endpoint_id in succeeded:
        conn.execute(update(e).where(e.c.id == endpoint_id).values(last_success_at=at))
    for endpoint_id, error in errors.items():
        conn.execute(update(e).where(e.c.id == endpoint_id).values(last_error=error, last_error_at=at))
    return results


def release(conn: Connection, claims: Sequence[Claim]) -> int:
    """Give back claims whose attempt was cut short by a stop (not counted as attempts)."""
    d = _DELIVERIES
    done = 0
    for claim in claims:
        done += conn.execute(update(d).where(_still_ours(claim), d.c.lease_until.is_not(None))
                             .values(attempts=d.c.attempts - 1, lease_until=None)).rowcount
    return done


def endpoint_error(conn: Connection, endpoint_id: int, error: str) -> None:
    e = _ENDPOINTS
    conn.execute(update(e).where(e.c.id == endpoint_id).values(last_error=error, last_error_at=now()))


def _of_active_endpoint() -> Any:
    return _DELIVERIES.c.endpoint_id.in_(select(_ENDPOINTS.c.id).where(_ENDPOINTS.c.active.is_(True)))


def _active_pending() -> Any:
    return and_(_DELIVERIES.c.status == PENDING, _of_active_endpoint())


def next_due(conn: Connection) -> datetime | None:
    """When the next pending delivery that waits for its retry is due."""
    d = _DELIVERIES
    return conn.execute(select(func.min(d.c.next_attempt_at)).where(_active_pending(), d.c.next_attempt_at > now())
                        ).scalar_one()


def backlog(conn: Connection) -> tuple[int, datetime | None]:
    """Pending deliveries of active endpoints, and when the oldest one's event was made
    (counted on the due index; the oldest is the smallest event id -- ids grow with
    time -- so only one event row is read, however long a dead endpoint's backlog)."""
    d = _DELIVERIES
    count, first = conn.execute(select(func.count(), func.min(d.c.event_id)).where(_active_pending())).one()
    if first is None:
        return count, None
    return count, conn.execute(select(_EVENTS.c.created_at).where(_EVENTS.c.id == first)).scalar_one_or_none()


# --- `gateway webhooks` ----------------------------------------------------------------------

def listing(conn: Connection, org_id: str) -> list[dict[str, Any]]:
    """The organisation's endpoints (active first, then by id) with their deliveries counted."""
    e, d = _ENDPOINTS, _DELIVERIES
    counts: dict[int, dict[str, int]] = {}
    for endpoint_id, status, n in conn.execute(
            select(d.c.endpoint_id, d.c.status, func.count()).where(d.c.org_id == org_id)
            .group_by(d.c.endpoint_id, d.c.status)):
        counts.setdefault(endpoint_id, {})[status] = n
    rows = conn.execute(select(e).where(e.c.org_id == org_id)
                        .order_by(case((e.c.active.is_(True), 0), else_=1), e.c.id)).all()
    return [{"id": r.id, "url": r.url, "events": r.events, "active": bool(r.active),
             **{s: counts.get(r.id, {}).get(s, 0) for s in (PENDING, FAILED, DELIVERED)},
             "last_error": r.last_error, "last_error_at": r.last_error_at, "last_success_at": r.last_success_at}
            for r in rows]


def failed(conn: Connection, org_id: str) -> list[Any]:
    """The organisation's failed deliveries in feed order (endpoint_id, seq, type,
    attempts, last_status, last_error, updated_at)."""
    d = _DELIVERIES
    return conn.execute(
        select(d.c.endpoint_id, d.c.seq, _EVENTS.c.type, d.c.attempts, d.c.last_status, d.c.last_error,
               d.c.updated_at)
        .select_from(d.join(_EVENTS, _EVENTS.c.id == d.c.event_id))
        .where(d.c.org_id == org_id, d.c.status == FAILED).order_by(d.c.seq, d.c.endpoint_id)).all()


def retry(conn: Connection, org_id: str, seq: int | None = None) -> int:
    """Failed deliveries of the organisation's active endpoints (only event ``seq``'s
    when given) pending again, due now, with the whole retry schedule; how many."""
    d = _DELIVERIES
    query = update(d).where(d.c.org_id == org_id, d.c.status == FAILED, _of_active_endpoint())
    if seq is not None:
        query = query.where(d.c.seq == seq)
    at = now()
    return conn.execute(query.values(status=PENDING, attempts=0, next_attempt_at=at, lease_until=None,
                                     updated_at=at)).rowcount
