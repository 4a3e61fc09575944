"""Webhook delivery (issue 14): the organisations' events POSTed to their [[webhooks]],
signed as the Standard Webhooks specification says, retried on the schedule of
``[webhooks] retry_seconds``, then marked failed and kept.

It runs in the webhook sender process (gateway/sender.py), whose passes call
``Dispatcher.step()`` when the daemon says it sequenced events, after attempts end,
and every ``[events] poll_seconds``.  A step hands each active endpoint its new
events and takes its due deliveries (gateway/store/webhooks.py ``take``: row locks,
leases), then starts one task per attempt on the sender's event loop and returns:
sends are never awaited by the step, so a slow or failing endpoint holds up neither
another endpoint (each has its own ``concurrency``) nor mail (another process).  A
step takes up to ``CLAIM_PER_SLOT`` deliveries per slot of an endpoint's
concurrency, so one pass (a few statements) serves many events; the attempts wait
for a slot.  A failing endpoint is probed with one attempt per first retry wait.
Outcomes are written in batches as attempts end.

HTTP is aiohttp's client: ~0.17 ms of CPU per request here against httpx's ~1.1 ms
(measured on loopback, keep-alive, the same 600-byte POST), and every event an
endpoint wants is one request.

Body: the feed's event without its id (``{"type", "timestamp", "data"}``); the id
travels in ``webhook-id`` -- the same on every attempt, so receivers deduplicate by
it (delivery is at least once: a process killed mid-send leaves a lease that runs
out, and the event is sent again)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, TypeVar

import aiohttp
from standardwebhooks import Webhook

from gateway import logs, metrics
from gateway.guard import guarded
from gateway.errors import TemporaryFailure
from gateway.views import public_id, ts
from gateway.rules.index import WebhookEntry
from gateway.settings import Settings
from gateway.store import webhooks as store
from gateway.store.db import Database
from gateway.store.sql import now

log = logs.get("gateway.webhooks")

# A lease outlives the attempts' timeouts by this much (the outcome's write included),
# so no other process takes the delivery while it is under way.
LEASE_MARGIN_SECONDS = 5.0
# Deliveries an endpoint may have leased per slot of its concurrency (a pass takes that
# many, sent `concurrency` at a time): one pass serves many events.
CLAIM_PER_SLOT = 64
# Of an answer, at most this much is read (the connection is kept for the next request
# when the answer was read whole).
ANSWER_READ_BYTES = 64 * 1024
# The gauges (pending deliveries, oldest pending age) at most this often.
GAUGES_EVERY_SECONDS = 5.0  # a count over a dead endpoint's whole backlog
USER_AGENT = "crm-mail-gateway webhooks"
# Outcomes are written this long after the first of a batch ends: one transaction for
# the attempts that end meanwhile (each is one more take of SQLite's write lock).
FLUSH_AFTER_SECONDS = 0.02
# At a stop, outcomes still being written are waited for this long.
FLUSH_WAIT_SECONDS = 5.0
T = TypeVar("T")


# --- secrets and signatures -------------------------------------------------------------

def read_secret(hook: WebhookEntry, environ: Any = None) -> tuple[str | None, str | None]:
    """The endpoint's signing secret, or None and what is wrong (with the fix)."""
    env = os.environ if environ is None else environ
    if hook.secret_env:
        secret = env.get(hook.secret_env, "").strip()
        if not secret:
            return None, (f"environment variable {hook.secret_env} (the secret of webhook {hook.url}) is not set: "
                          "set it where the gateway runs (see README, Events and webhooks, for making one)")
    else:
        assert hook.secret_path is not None
        try:
            secret = hook.secret_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None, f"secret file {hook.secret_path} of webhook {hook.url} does not exist: create it"
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            return None, (f"cannot read secret file {hook.secret_path} of webhook {hook.url}: {reason}: make it "
                          "readable by the user the gateway runs as")
    try:
        Webhook(secret)
    except Exception:  # binascii.Error, EmptyWebhookSecretError: the package has no common base
        return None, (f"the secret of webhook {hook.url} ({hook.secret_source}) is not a Standard Webhooks secret "
                      "('whsec_' + base64)")
    return secret, None


def signed(secret: str, msg_id: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt (Standard Webhooks: the signature covers
    the id, the timestamp and the body)."""
    return signed_body(secret, msg_id, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def event_body(type_: str, created_at: datetime, data_json: str) -> str:
    """A webhook's body -- the feed's event without its id, ``{"type", "timestamp",
    "data"}`` -- around the event's data as stored (JSON text: not decoded and encoded
    again for every attempt)."""
    return f'{{"type":{json.dumps(type_)},"timestamp":{json.dumps(ts(created_at))},"data":{data_json}}}'


def signed_body(secret: str, msg_id: str, body: str) -> tuple[bytes, dict[str, str]]:
    at = datetime.now(timezone.utc)
    return body.encode("utf-8"), {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, at, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def request_error(exc: BaseException) -> str:
    """What went wrong with a request that got no answer, for last_error and the CLI."""
    if isinstance(exc, aiohttp.ClientConnectorError):  # its own text names ssl even for http://
        reason = exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__
        return f"{type(exc).__name__}: cannot connect to {exc.host}:{exc.port}: {reason}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ") or type(exc).__name__


def attempt_error(status: int | None, location: str | None = None) -> str | None:
    """None for a 2xx; else what went wrong, for the delivery's last_error."""
    if status is not None and 200 <= status < 300:
        return None
    if status is not None and 300 <= status < 400:
        return f"HTTP {status}: redirect{f' to {location}' if location else ''} not followed"
    return f"HTTP {status}"


def client(timeout: float) -> aiohttp.ClientSession:
    """Keep-alive connections, no limit on them (each endpoint's concurrency is its
    limit), no cookies kept, the attempt's timeout on the whole request."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout),
                                 connector=aiohttp.TCPConnector(limit=0), cookie_jar=aiohttp.DummyCookieJar(),
                                 skip_auto_headers=("Accept-Encoding",))


async def post(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: dict[str, str]) -> tuple[int, str | None, bytes]:
    """One attempt: the status, the Location header and the start of the answer.
    Redirects are not followed: an endpoint says where events go in the rules only."""
    async with session.post(url, data=body, headers=headers, allow_redirects=False) as response:
        answer = await response.content.read(ANSWER_READ_BYTES)
        return response.status, response.headers.get("location"), answer


# --- the daemon's deliveries -------------------------------------------------------------

# Every organisation's [[webhooks]], by (organisation, url).
Hooks = dict[tuple[str, str], WebhookEntry]


class _Pass(NamedTuple):
    claims: list[tuple[store.Claim, str, str]]  # (claim, url, secret)
    more: bool
    next_due: datetime | None


class Dispatcher:
    def __init__(self, database: Database, settings: Settings, hooks: Callable[[], Hooks]):
        self.database = database
        self.settings = settings
        self.hooks = hooks  # the current rules' [[webhooks]] (reloads swap them)
        self.wake: Callable[[], None] = lambda: None  # the outbox's: another pass soon
        # Its own thread: neither the filing workers nor the outbox's sequencing wait on it.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-webhooks")
        self._client: aiohttp.ClientSession | None = None
        # An endpoint's attempts in flight in this process: its concurrency.
        self._slots: dict[int, asyncio.Semaphore] = {}
        # When an endpoint's last attempt in this process failed (monotonic): attempts
        # claimed before that are given back, not sent (a failing endpoint is probed
        # one attempt at a time, not sent the rest of a batch).
        self._failed_at: dict[int, float] = {}
        self._sending: dict[asyncio.Task[None], store.Claim] = {}
        self._cut_passes: list[asyncio.Future[_Pass]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._secret_problems: dict[int, str] = {}
        self._gauges_at = 0.0
        # Outcomes of attempts that ended (or were given back: GIVEN_BACK), waiting for
        # _flush (one transaction for them all).
        self._outcomes: list[tuple[store.Claim, int | None, str | None, asyncio.Future[str | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, guarded(fn, "webhooks"), *args)

    async def step(self) -> None:
        """Hand out new events, take due deliveries, start their attempts."""
        hooks = self.hooks()
        if not hooks:  # no [[webhooks]] in the rules: no thread hop, no query, nothing timed
            return
        pass_ = asyncio.ensure_future(self._run(self._pass, hooks))
        try:
            found = await asyncio.shield(pass_)
        except asyncio.CancelledError:  # stopping: the pass ends in its thread; stop() gives back what it took
            self._cut_passes.append(pass_)
            raise
        if found.claims and self._client is None:
            self._client = client(self.settings.webhooks.timeout_seconds)
        loop = asyncio.get_running_loop()
        claimed_at = time.monotonic()
        for claim, url, secret in found.claims:
            task = loop.create_task(self._attempt(claim, url, secret, claimed_at))
            self._sending[task] = claim
            task.add_done_callback(self._sent)
        if found.more:
            self.wake()
        if found.next_due is not None:
            self._wake_at(found.next_due)

    def _pass(self, hooks: Hooks) -> _Pass:
        """In the dispatcher's thread: every active endpoint this process knows the
        secret of (an endpoint only another process's newer rules name waits for it)."""
        s = self.settings.webhooks
        claims: list[tuple[store.Claim, str, str]] = []
        more = False
        if not hooks:  # no [[webhooks]] here: not a query more per pass
            return _Pass([], False, None)
        probe = s.retry_seconds[0] if s.retry_seconds else 0.0
        endpoints = self.database.reading(store.endpoints_with_work, probe)
        for endpoint in endpoints:
            hook = hooks.get((endpoint.org_id, endpoint.url))
            if hook is None:
                continue
            secret, problem = read_secret(hook)
            if problem != self._secret_problems.get(endpoint.id):
                if problem:  # said once, not every pass; the deliveries wait for the secret
                    log.error("webhook_secret_unavailable", org=endpoint.org_id, url=endpoint.url, problem=problem)
                    self.database.writing(store.endpoint_error, endpoint.id, problem)
                    self._secret_problems[endpoint.id] = problem
                else:
                    self._secret_problems.pop(endpoint.id, None)
            taken = self.database.writing(store.take, endpoint.id, s.concurrency,
                                          s.concurrency * CLAIM_PER_SLOT if secret else 0,
                                          s.timeout_seconds, LEASE_MARGIN_SECONDS, probe)
            if taken is None:
                continue
            more = more or taken.more
            claims += [(claim, endpoint.url, secret) for claim in taken.claims if secret]
        if time.monotonic() - self._gauges_at >= GAUGES_EVERY_SECONDS:
            self._gauges_at = time.monotonic()
            pending, oldest = self.database.reading(store.backlog)
            metrics.events_pending.set(pending)
            metrics.events_oldest_pending_age.set(max(0.0, (now() - _aware(oldest)).total_seconds())
                                                  if oldest else 0)
        due = self.database.reading(store.next_due)
        return _Pass(claims, more, _aware(due) if due else None)

    async def _attempt(self, claim: store.Claim, url: str, secret: str, claimed_at: float) -> None:
        event_id = public_id(claim.org_id, claim.seq)  # in webhook-id, not in the body
        body, headers = signed_body(secret, event_id, event_body(claim.type, claim.created_at, claim.data))
        status: int | None = None
        error: str | None
        assert self._client is not None
        slot = self._slots.get(claim.endpoint_id)
        if slot is None:
            slot = self._slots[claim.endpoint_id] = asyncio.Semaphore(self.settings.webhooks.concurrency)
        async with slot:
            if self._failed_at.get(claim.endpoint_id, -1.0) > claimed_at:
                # The endpoint failed since this was claimed: not sent, given back (not
                # an attempt); the next passes probe it one attempt at a time.
                self._sending.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
                await self._record(claim, None, GIVEN_BACK)
                return
            started = time.monotonic()
            try:
                async with asyncio.timeout(self.settings.webhooks.timeout_seconds):
                    status, location, _answer = await post(self._client, url, body, headers)
                    error = attempt_error(status, location)
            except TimeoutError:
                error = f"no answer within {self.settings.webhooks.timeout_seconds:g} s"
            except (aiohttp.ClientError, OSError) as exc:
                error = request_error(exc)
        # Answered: a stop no longer cuts this attempt short; its outcome is written.
        self._sending.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        if error is not None:
            self._failed_at[claim.endpoint_id] = time.monotonic()
        try:
            outcome = await self._record(claim, status, error)
        except TemporaryFailure as exc:  # the lease runs out and the event is sent again
            log.warning("webhook_outcome_not_recorded", event_id=event_id, url=url, error=exc.detail)
            return
        fields = dict(org=claim.org_id, event_id=event_id, type=claim.type, url=url, attempt=claim.attempts,
                      status=status, duration_ms=round((time.monotonic() - started) * 1000, 1))
        if outcome is None:
            log.warning("webhook_claim_lost", **fields)
        else:
            metrics.webhook_deliveries.labels(outcome=outcome).inc()
            if outcome == "delivered":
                log.info("webhook_delivered", **fields)
            elif outcome == "retry":
                wait = self.settings.webhooks.retry_seconds[claim.attempts - 1]
                log.warning("webhook_attempt_failed", error=error, retry_in_seconds=wait, **fields)
            else:
                log.error("webhook_failed", error=error, **fields)
        self.wake()  # the record's next event, or room for one more attempt

    async def _record(self, claim: store.Claim, status: int | None, error: str | None) -> str | None:
        """An attempt's outcome, written together with the others that ended meanwhile:
        one transaction for many attempts, not one each (on SQLite each would take the
        write lock that filing needs)."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((claim, status, error, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_AFTER_SECONDS)  # the attempts ending meanwhile join this transaction
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            outcomes = [(claim, status, error) for claim, status, error, _ in batch if error is not GIVEN_BACK]
            given_back = [claim for claim, _, error, _ in batch if error is GIVEN_BACK]
            try:
                results = iter(await self._run(self.database.writing, _settle, outcomes, given_back,
                                               self.settings.webhooks.retry_seconds))
            except TemporaryFailure as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, _, error, done in batch:
                if not done.done():
                    done.set_result(None if error is GIVEN_BACK else next(results))

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            metrics.errors.labels(component="webhooks").inc()
            log.error("webhook_attempt_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    def _wake_at(self, due: datetime) -> None:
        """Another pass when a retry falls due (sooner than the next poll)."""
        delay = max(0.0, (due - now()).total_seconds())
        if delay >= self.settings.events.poll_seconds:
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._timer is not None and not self._timer.cancelled() and self._timer_at <= at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at + 0.01, self.wake)

    async def stop(self) -> None:
        """Cut attempts under way short and give their deliveries back (sent again by
        whichever process runs next, without waiting for the lease)."""
        if self._timer is not None:
            self._timer.cancel()
        sending = dict(self._sending)
        for task in sending:
            task.cancel()
        if sending:
            await asyncio.wait(sending)
        claims = list(sending.values())
        for cut in self._cut_passes:  # a pass the stop interrupted: what it took was never sent
            try:
                claims += [claim for claim, _url, _secret in await cut]
            except Exception:  # its error was the pass's; nothing was taken then
                pass
        if claims:
            try:
                released = await self._run(self.database.writing, store.release, claims)
                log.info("webhook_attempts_released", count=released)
            except TemporaryFailure as exc:
                log.warning("webhook_attempts_not_released", count=len(claims), error=exc.detail)
        if self._flusher is not None:  # outcomes of attempts that were answered
            await asyncio.wait([self._flusher], timeout=FLUSH_WAIT_SECONDS)
        if self._client is not None:
            await self._client.close()
            self._client = None
        self._executor.shutdown(wait=False, cancel_futures=True)


# The "error" of an attempt given back unsent (store.release: not counted as an attempt).
GIVEN_BACK = "given back"


def _settle(conn: Any, outcomes: list[tuple[store.Claim, int | None, str | None]], given_back: list[store.Claim],
            retry_seconds: list[float]) -> list[str | None]:
    """Outcomes written and claims given back, in one transaction."""
    if given_back:
        store.release(conn, given_back)
    return store.record_many(conn, outcomes, retry_seconds)


def _aware(value: datetime | None) -> datetime:
    """SQLite hands back naive datetimes; we only store UTC."""
    assert value is not None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
