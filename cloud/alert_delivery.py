"""Outbound alert webhooks: signed POSTs to each fleet's URL, retried, resumable.

Each due alert, claimed so that one worker of several posts it
(``store.claim_due_alerts``), is POSTed as ``alerts.webhook_body`` with
``X-CTPL-Alert-Id``, ``X-CTPL-Timestamp`` (unix seconds) and ``X-CTPL-Signature:
sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``. A 2xx answer delivers it;
anything else (another status, a redirect, timeout, connection error) is retried after a
full-jitter exponential delay, up to ``max_attempts``. Every attempt is written with
``store.alert_attempted`` before the next one, so a restart resumes where it stopped.
Delivery is at least once: receivers dedup by ``X-CTPL-Alert-Id`` (docs/alerts.md).

Every POST goes through ``cloud.outbound``: a target the outbound policy refuses (a private
or loopback address, now or after DNS changed) gets nothing, and its alert is given up at
once, without an attempt and without any transport detail (``alert_target_refused``).
"""

import asyncio
import hashlib
import hmac
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from ssl import SSLContext
from types import TracebackType
from typing import Final, Protocol, Self

from pydantic import SecretStr

from .alerts import retry_delay_s, webhook_body
from .outbound import (
    OutboundClient,
    Refusal,
    Resolver,
    TargetRefused,
    TransportFailed,
    judge_url,
    system_resolver,
)
from .store import AlertRow, Store

log = logging.getLogger(__name__)
MAX_ATTEMPTS: Final = 12
BASE_S: Final = 1.0
CAP_S: Final = 300.0
TIMEOUT_S: Final = 10.0
CLAIM_LEASE: Final = timedelta(seconds=120)
"""A claimed alert is not due again for this long: its attempt ends (TIMEOUT_S) and is
recorded well within it, unless the worker died, when another takes it over."""
CONCURRENCY: Final = 8
SIGNATURE_PREFIX: Final = "sha256="


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """A fleet's webhook as its operator set it through the API."""

    fleet_id: str
    url: str
    secret: SecretStr


class Webhook(Protocol):
    """One fleet's webhook (``config.FleetWebhook``)."""

    @property
    def fleet_id(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def secret(self) -> SecretStr: ...


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-CTPL-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify_alert(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: datetime | None = None,
    tolerance_s: float = 300.0,
) -> bool:
    """For receivers: whether ``signature`` is ours over exactly ``body`` and ``timestamp``,
    and (given ``now``) the timestamp is within ``tolerance_s`` of it (refuses replays)."""
    if timestamp is None or signature is None or not timestamp.isdigit():
        return False
    if now is not None and abs(now.timestamp() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class AlertSender:
    """Delivers due alerts to the fleets' webhooks; ``counters`` feed /metrics.

    ``allow_loopback`` (``CloudConfig.allow_loopback_webhooks``, development only) lets
    webhooks reach this host's loopback; ``resolver`` and ``tls`` are for tests.
    """

    def __init__(
        self,
        webhooks: Iterable[Webhook],
        *,
        allow_loopback: bool = False,
        resolver: Resolver = system_resolver,
        tls: SSLContext | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        base_s: float = BASE_S,
        cap_s: float = CAP_S,
        timeout_s: float = TIMEOUT_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.hooks: dict[str, Webhook] = {}
        for hook in webhooks:
            self.hooks.setdefault(hook.fleet_id, hook)  # one per fleet: the first given
            judged = judge_url(hook.url, allow_loopback=allow_loopback)
            if isinstance(judged, Refusal):  # its alerts will be given up, not sent
                log.error("fleet %s: its configured webhook is refused (%s)", hook.fleet_id,
                          judged.reason)  # fmt: skip
        self.client = OutboundClient(
            allow_loopback=allow_loopback, resolver=resolver, tls=tls, timeout_s=timeout_s,
            max_connections=CONCURRENCY,
        )  # fmt: skip
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.rand = rand
        self.counters: Counter[str] = Counter()

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def deliver_due(self, store: Store, now: datetime, limit: int = 50) -> int:
        """Attempt every alert due at ``now`` (at most ``limit``); how many were delivered.

        A fleet's webhook set through the API (``Store.fleet_webhooks``) takes precedence
        over one from the config.
        """
        due = await store.claim_due_alerts(now, CLAIM_LEASE, limit)
        if not due:
            return 0
        hooks: dict[str, Webhook] = dict(self.hooks)
        for fleet_id, (url, secret) in (await store.fleet_webhooks()).items():
            hooks[fleet_id] = StoredWebhook(fleet_id, url, SecretStr(secret))
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(a: AlertRow) -> bool:
            async with gate:
                return await self.attempt(store, a, now, hooks.get(a.fleet_id))

        results = await asyncio.gather(*(one(a) for a in due))
        return sum(results)

    async def attempt(
        self, store: Store, a: AlertRow, now: datetime, hook: Webhook | None = None
    ) -> bool:
        """POST ``a`` once and record the outcome; True if delivered."""
        hook = hook or self.hooks.get(a.fleet_id)
        if hook is None:
            # No webhook for this fleet: the alert stays on the API and the dashboard only.
            await store.alert_attempted(
                a.alert_id, attempts=a.attempts, delivered_at=None, next_attempt_at=None,
                gave_up=True,
            )  # fmt: skip
            self.counters["alerts_no_webhook"] += 1
            return False
        try:
            ok, why = await self._post(hook, a, now)
        except TargetRefused as exc:
            # Nothing was sent and no attempt is counted: the alert's record says nothing
            # about the address or its ports (a webhook is not a port scanner).
            await store.alert_attempted(
                a.alert_id, attempts=a.attempts, delivered_at=None, next_attempt_at=None,
                gave_up=True,
            )  # fmt: skip
            self.counters["alert_target_refused"] += 1
            log.warning("alert %s: fleet %s's webhook target refused (%s), not sent",
                        a.alert_id, a.fleet_id, exc.reason)  # fmt: skip
            return False
        attempts = a.attempts + 1
        if ok:
            await store.alert_attempted(
                a.alert_id, attempts=attempts, delivered_at=now, next_attempt_at=None
            )
            self.counters["alerts_delivered"] += 1
            return True
        if attempts >= self.max_attempts:
            await store.alert_attempted(
                a.alert_id, attempts=attempts, delivered_at=None, next_attempt_at=None,
                gave_up=True,
            )  # fmt: skip
            self.counters["alerts_gave_up"] += 1
            log.warning("alert %s: gave up after %d attempts (%s)", a.alert_id, attempts, why)
            return False
        delay = retry_delay_s(attempts, self.base_s, self.cap_s, self.rand())
        await store.alert_attempted(
            a.alert_id, attempts=attempts, delivered_at=None,
            next_attempt_at=now + timedelta(seconds=delay),
        )  # fmt: skip
        self.counters["alerts_failed"] += 1
        log.info("alert %s: attempt %d failed (%s), retry in %.1f s", a.alert_id, attempts,
                 why, delay)  # fmt: skip
        return False

    async def _post(self, hook: Webhook, a: AlertRow, now: datetime) -> tuple[bool, str]:
        body = webhook_body(a)
        timestamp = str(int(now.timestamp()))
        headers = {
            "Content-Type": "application/json",
            "X-CTPL-Alert-Id": a.alert_id,
            "X-CTPL-Timestamp": timestamp,
            "X-CTPL-Signature": sign(hook.secret.get_secret_value(), timestamp, body),
        }
        try:
            status = await self.client.post(hook.url, body, headers)
        except TransportFailed as exc:
            return False, exc.kind
        return 200 <= status < 300, f"HTTP {status}"
