"""The agent's asyncio shell: link, store and timers around the pure inbox and policy rules.

``Agent.run`` holds one MQTT session at a time and reconnects with capped, full-jitter
exponential backoff when it drops. Incoming messages are verified (inbox), judged
(policy) and stored; nothing that fails on the way changes stored state or stops the agent.
Beside the session, it checks at start and every ``renewal_check_s`` whether the
certificate needs renewing; after a renewal it reloads key, certificate and pinned keys
and ends the session, so that the next one uses them.

A cloud message signed under a kid the agent does not know (a rolled signing key) makes
it fetch the cloud's key set, at most once per ``keyset_refresh_min_s``; a key set that
the pinned root signed and that is newer than the held one is installed and trusted at
once, and the agent asks for its state again. Keys past their cut-off stop verifying.

Trusted time (``trusted_time``): a verified, accepted state that replies to a status
request sent during this run anchors it (the request's and the reply's monotonic
readings bound when the cloud stamped ``issued_at``); any other accepted state (a
retained or pushed copy, perhaps days old) and the stored record only raise the floor.
The floor is persisted on every accept, every ``trusted_floor_save_s`` and at a clean
stop, and loaded at start. What the head unit may show comes from ``status_view()``.

Sessions follow the pure ``sync.Sync`` machine: on every connect, subscribe (whatever
``session_present`` says), ask for the state, then drain the outbox. Intents
(``request_renewal``, ``report_event``) are committed to the store's outbox before they
are acknowledged, sent (each time re-signed under a fresh seq) until the cloud's signed
``intent.receipt`` is stored beside them, and survive restarts and power cuts.
"""

import asyncio
import contextlib
import json
import logging
import random
import ssl
from collections import Counter
from typing import Final

from . import (
    display,
    drop_log,
    head_unit_http,
    identity,
    inbox,
    intents,
    keyring,
    keyset,
    provisioning,
    reminders,
    sync,
)
from .backoff import Backoff
from .boot import current_boot_id
from .config import AgentConfig
from .errors import (
    AgentError,
    ConfigError,
    KeySetError,
    LinkError,
    NotConnectedError,
    NotRunningError,
    StateTimeoutError,
    StoreError,
)
from .head_unit import HeadUnit
from .keystore import FileKeyStore, KeySigner
from .link import Link, Received, open_link, tls_context
from .policy import Accept, Duplicate, Refuse, decide
from .protocol import messages, topics
from .protocol.clock import Clock, SystemClock
from .protocol.keys import PublicKey
from .protocol.messages import (
    ErrorReply,
    IntentReceipt,
    PolicyState,
    RenewalUpdate,
    StatusRequest,
)
from .store import Store
from .trusted_time import TrustedClock, TrustedNow
from .vehicle import SimulatedBus, VehicleBus

log = logging.getLogger(__name__)

STABLE_S: Final = 60.0
"""A session that lasted this long resets the reconnect backoff."""
SENT_KEPT: Final = 64
"""How many recent status requests' send times are kept to anchor their replies."""
DROP_LOG_TICK_S: Final = 10.0
"""How often ended drop-log windows are summarised: a summary comes 60–70 s after its
window opened, even when the flood has stopped."""


class _StopRequested(Exception):
    """Raised inside the session's TaskGroup to end it cleanly."""


class _ReconnectRequested(Exception):
    """Raised inside the session's TaskGroup to end it so that the next one uses a new identity."""


class Agent:
    """One car's agent; run it once with ``run()``, end it with ``stop()``.

    Construction finishes or discards an interrupted renewal, then loads the keys (the
    pinned ones and the key set's) and TLS files; it raises ConfigError if one is unusable.

    ``counters`` tallies every incoming message's outcome: ``accepted``, ``duplicate``,
    ``error_reply``, or the reason it was dropped (``bad_signature``, ``rollback``, …);
    ``link_failures`` tallies lost or failed sessions by LinkError reason;
    ``renewals`` tallies renewal checks: ``renewed``, ``not_due``, ``failed``;
    ``keyset_fetches`` tallies key set fetches: ``accepted``, or the reason one was
    refused (``rollback``, ``bad_signature``, ``unknown_key``, …) or ``failed``;
    ``time_events`` tallies what accepted states did to trusted time: ``anchored``,
    ``floor`` (not a reply to this run's request: a lower bound only), ``refused``
    (an ``issued_at`` below the floor);
    ``intent_events`` tallies the outbox: ``recorded``, ``sent``, ``resent`` (sent
    again for want of a receipt), ``receipted``, ``receipt_repeated`` (a receipt for an
    intent that already had one, or none the outbox holds), ``send_failed``;
    ``head_unit_requests`` tallies the head unit's HTTP outcomes: ``page``, ``state``,
    ``events``, ``answer``, or the error code sent (``bad_request``, ``stale_prompt``,
    ``forbidden_origin``, …: docs/head-unit.md).
    """

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        bus: VehicleBus | None = None,
    ) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self.link_failures: Counter[str] = Counter()
        self.renewals: Counter[str] = Counter()
        self.keyset_fetches: Counter[str] = Counter()
        self.time_events: Counter[str] = Counter()
        self.intent_events: Counter[str] = Counter()
        self.head_unit_requests: Counter[str] = Counter()
        self._drops = drop_log.DropLog()
        self.sync = sync.Sync()
        self._first_ask: int | None = None
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrecy
        try:
            identity.recover(config.key_file, config.cert_file)
        except OSError as exc:
            raise ConfigError(f"{config.key_file}: cannot recover a renewal: {exc}") from exc
        self._signer, self._pinned, self._held, self._tls, self._cert_pem = self._load_identity()
        self._reconnect = asyncio.Event()
        self._keys_wanted = asyncio.Event()
        self._last_fetch_at: float | None = None
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._state: PolicyState | None = None
        self._renewal: RenewalUpdate | None = None
        self._trusted = TrustedClock()
        self._sent: dict[int, float] = {}
        self._last_error: ErrorReply | None = None
        self._store: Store | None = None
        self._link: Link | None = None
        self._started = False
        self._stopping = asyncio.Event()
        self._changed = asyncio.Condition()
        self.head_unit = HeadUnit(
            self,
            lang=config.lang,
            config=reminders.ReminderConfig(config.reminder_stages, config.reminder_daily_cap),
            bus=bus if bus is not None else _bus_of(config),
            poll_s=config.bus_poll_s,
        )
        self.head_unit_url: str | None = None
        """Where the head-unit page is served, once it is (``head_unit_port`` set)."""

    @property
    def vid(self) -> str:
        """This car's vid."""
        return self.config.vid

    @property
    def state(self) -> PolicyState | None:
        """The newest policy state verified against the pinned keys during this run."""
        return self._state

    @property
    def renewal(self) -> RenewalUpdate | None:
        """The newest verified renewal update (quotes, payment link, result), if any."""
        return self._renewal

    @property
    def last_error(self) -> ErrorReply | None:
        """The last verified error reply received during this run."""
        return self._last_error

    def trusted_now(self) -> TrustedNow | None:
        """What the agent knows of real time now, from signed time only; None when nothing."""
        return self._trusted.now(self._clock.monotonic())

    def status_view(self) -> display.StatusView | display.Unverified:
        """What the head unit may show now: the held state judged in trusted time."""
        return display.view(self._state, self.trusted_now())

    @property
    def keyset_version(self) -> int | None:
        """The version of the key set the agent trusts, if it holds one."""
        return None if self._held is None else self._held.version

    def trusted_keys(self) -> dict[str, PublicKey]:
        """The keys a cloud message may be signed with now: pinned, and the key set's usable."""
        return keyring.trusted_keys(self._pinned, self._held, self._clock.now())

    @property
    def connected(self) -> bool:
        """Whether a session with the broker is up right now."""
        return self._link is not None

    def stop(self) -> None:
        """Make ``run()`` announce offline, disconnect and return (at once if it has not begun)."""
        self._stopping.set()

    async def run(self) -> None:
        """Open the store, then connect, sync and serve until ``stop()``; an Agent runs once."""
        if self._started:
            raise AgentError("an Agent runs once; make a new one")
        self._started = True
        async with Store(self.config.db_path) as store:
            try:
                floor = await store.trusted_floor()
                if floor is not None:
                    self._trusted.raise_floor(floor)
                await self._load_stored(store)
                for row in await store.pending_intents():
                    self.sync.handle(sync.IntentQueued(row.intent_id, row.type))
                self._store = store  # intents may be recorded from here on
                vid = self.config.vid
                async with asyncio.TaskGroup() as tg:
                    side = [
                        tg.create_task(self.head_unit.run(store), name=f"agent-{vid}-head-unit"),
                        tg.create_task(self._serve_head_unit(), name=f"agent-{vid}-head-unit-http"),
                        tg.create_task(
                            self._renew_periodically(store), name=f"agent-{vid}-renewal"
                        ),
                        tg.create_task(self._refresh_keys_when_asked(), name=f"agent-{vid}-keyset"),
                        tg.create_task(
                            self._save_floor_periodically(store), name=f"agent-{vid}-time"
                        ),
                        tg.create_task(
                            self._log_drops_periodically(), name=f"agent-{vid}-drop-log"
                        ),
                    ]
                    await self._stay_connected(store)
                    for task in side:
                        task.cancel()
                await self._save_floor(store)
                self._log_drops(self._drops.flush(self._clock.monotonic()))
            finally:
                self._store = None
                if self.sync.phase is not sync.Phase.STOPPED:
                    self.sync.handle(sync.Stop())

    def _load_identity(
        self,
    ) -> tuple[KeySigner, dict[str, PublicKey], keyset.KeySet | None, ssl.SSLContext, bytes]:
        """The signer, pinned keys, held key set, TLS context and certificate, from the files."""
        config = self.config
        try:
            cert_pem = config.cert_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{config.cert_file}: {exc.strerror or exc}") from exc
        signer = KeySigner(FileKeyStore.load(config.key_file))
        pinned, held = keyring.load_trust(
            config.cloud_keys, config.keyset_file, config.root_key, self._clock.now()
        )
        return signer, pinned, held, tls_context(config), cert_pem

    def _can_refresh_keys(self) -> bool:
        c = self.config
        return c.cloud_url is not None and c.root_key is not None and c.keyset_file is not None

    async def _refresh_keys_when_asked(self) -> None:
        """Fetch the key set when a message names an unknown kid; at most once per interval."""
        if not self._can_refresh_keys():
            return
        while True:
            await self._keys_wanted.wait()
            delay = keyset.fetch_delay(
                self._last_fetch_at, self._clock.monotonic(), self.config.keyset_refresh_min_s
            )
            if delay > 0:
                log.info("%s: next key set fetch in %.0f s", self.config.vid, delay)
                await asyncio.sleep(delay)
            self._last_fetch_at = self._clock.monotonic()
            if await self._refresh_keys_once():
                await self._ask_again()
            # Cleared only now: unknown kids seen during the fetch asked for this very one.
            self._keys_wanted.clear()

    async def _refresh_keys_once(self) -> bool:
        """One key set fetch; True when a newer key set is now trusted. Never raises."""
        vid = self.config.vid
        try:
            fetched = await provisioning.refresh_keyset(self.config)
        except KeySetError as exc:
            self.keyset_fetches[exc.reason] += 1
            log.warning("%s: key set refused: %s", vid, exc)
            return False
        except Exception as exc:  # unreachable, refused, a bug: try again on the next kid
            self.keyset_fetches["failed"] += 1
            log.warning("%s: key set fetch failed: %s", vid, exc)
            return False
        self._held = fetched
        self.keyset_fetches["accepted"] += 1
        log.info("%s: key set v%d accepted (%d keys)", vid, fetched.version, len(fetched.keys))
        return True

    async def _ask_again(self) -> None:
        link, store = self._link, self._store
        if link is None or store is None:
            return  # the next session asks on connect
        try:
            await self._send_status(link, store)
        except AgentError as exc:  # the session's own tasks notice a lost link
            log.warning("%s: cannot ask again after the key set: %s", self.config.vid, exc)

    async def _renew_periodically(self, store: Store) -> None:
        """Check at start, then every renewal_check_s; after a failure retry sooner, backing off."""
        if self.config.cloud_url is None:
            log.info("%s: no cloud_url configured: certificate renewal is off", self.config.vid)
            return
        retry = Backoff(self.config.renewal_retry_s, self.config.renewal_check_s)
        failures = 0
        while True:
            if await self._renew_once(store):
                failures = 0
                delay = self.config.renewal_check_s
            else:
                # Never sooner than renewal_retry_s: full jitter alone could draw ~0.
                delay = max(retry.min_s, retry.delay(failures, self._rng.random()))
                failures += 1
            await asyncio.sleep(delay)

    async def _renew_once(self, store: Store) -> bool:
        """One renewal check; False when it failed (and should be retried sooner)."""
        vid = self.config.vid
        try:
            outcome = await provisioning.renew(self.config, store, self._clock.now())
        except Exception as exc:  # a failed renewal is retried later, never fatal
            self.renewals["failed"] += 1
            log.warning("%s: certificate renewal failed: %s", vid, exc)
            return False
        if isinstance(outcome, provisioning.NotDue):
            self.renewals["not_due"] += 1
            log.debug("%s: certificate valid until %s; no renewal due", vid, outcome.not_after)
        else:
            self.renewals["renewed"] += 1
            log.info("%s: certificate renewed, valid until %s", vid, outcome.not_after)
        # Also picks up a renewal made meanwhile by `ctpl-agent renew`.
        try:
            changed = self.config.cert_file.read_bytes() != self._cert_pem
            if changed:
                loaded = self._load_identity()
                self._signer, self._pinned, self._held, self._tls, self._cert_pem = loaded
        except (OSError, ConfigError) as exc:  # verified before the swap, so not expected
            log.error("%s: the renewed identity does not load: %s", vid, exc)
            return True
        if changed:
            log.info("%s: reconnecting with the renewed certificate", vid)
            self._reconnect.set()
        return True

    async def wait_for_state(
        self, timeout_s: float, *, min_version: int = 1, min_seq: int = 1
    ) -> PolicyState:
        """The verified state once its version and cloud seq reach the minimums; at once if held.

        A state counts once verified in this run: the stored record re-verified at
        start, or one accepted since. Raise StateTimeoutError after ``timeout_s``.
        """

        def ready() -> bool:
            held = self._state
            return held is not None and held.version >= min_version and held.seq >= min_seq

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(ready)
        except TimeoutError:
            raise StateTimeoutError(timeout_s) from None
        assert self._state is not None
        return self._state

    async def request_status(self) -> int:
        """Publish a signed status request now; return its seq. Raise NotConnectedError."""
        link, store = self._link, self._store
        if link is None or store is None:
            raise NotConnectedError()
        return await self._send_status(link, store)

    async def _load_stored(self, store: Store) -> None:
        renewal = await store.renewal()
        if renewal is not None:
            read = inbox.read(self.config.vid, self.trusted_keys(), *renewal)
            if isinstance(read, inbox.Verified) and isinstance(read.body, RenewalUpdate):
                self._renewal = read.body
        record = await store.policy()
        if record is None:
            return
        outcome = inbox.read(self.config.vid, self.trusted_keys(), record.topic, record.envelope)
        if isinstance(outcome, inbox.Verified) and isinstance(outcome.body, PolicyState):
            self._trusted.raise_floor(outcome.body.issued_at)  # issued long ago: a floor only
            await self._hold(outcome.body)
            log.info("%s: stored policy state v%d verified", self.config.vid, outcome.body.version)
        else:
            self.counters["stored_unverified"] += 1
            log.warning("%s: stored policy state does not verify; not shown", self.config.vid)

    async def _stay_connected(self, store: Store) -> None:
        attempt = 0
        while not self._stopping.is_set():
            connected_at: float | None = None
            self._reconnect.clear()
            try:
                async with open_link(self.config, self._tls) as link:
                    connected_at = self._clock.monotonic()
                    await self._serve(link, store)
            except* LinkError as group:
                for exc in group.exceptions:
                    self.link_failures[exc.reason if isinstance(exc, LinkError) else "link"] += 1
                log.warning("%s: link down: %s", self.config.vid, group.exceptions[0])
            if self._stopping.is_set():
                return
            if self._reconnect.is_set():
                attempt = 0
                continue
            # Only a session that held resets the backoff: one that is kicked at once
            # (another client with this id, a revoked cert) must not retry in a tight loop.
            if connected_at is not None and self._clock.monotonic() - connected_at >= STABLE_S:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng.random())
            attempt += 1
            log.info("%s: reconnecting in %.1f s", self.config.vid, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    async def _serve(self, link: Link, store: Store) -> None:
        vid = self.config.vid
        present = bool(link.session_present)
        try:
            await self._apply(self.sync.handle(sync.Connected(present)), link, store)
            log.info("%s: connected (session present: %s)", vid, present)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(link, store), name=f"agent-{vid}-receive")
                tg.create_task(self._report(link, store), name=f"agent-{vid}-status")
                tg.create_task(self._resend(link, store), name=f"agent-{vid}-resend")
                tg.create_task(self._watch_stop(), name=f"agent-{vid}-stop")
                tg.create_task(self._watch_reconnect(), name=f"agent-{vid}-reconnect")
        except* _StopRequested:
            log.info("%s: stopping", vid)
        except* _ReconnectRequested:
            log.info("%s: ending the session to use the renewed identity", vid)
        finally:
            self._link = None
            if self.sync.phase not in (sync.Phase.OFFLINE, sync.Phase.STOPPED):
                self.sync.handle(sync.LinkLost())

    async def _apply(self, commands: list[sync.Command], link: Link, store: Store) -> None:
        """Carry out the sync machine's commands in order (and those they lead to)."""
        queue = list(commands)
        while queue:
            match queue.pop(0):
                case sync.Subscribe():
                    await link.subscribe(topics.down_filter(self.config.vid))
                    self._link = link  # connected: replies can reach the agent now
                    queue.extend(self.sync.handle(sync.Subscribed()))
                case sync.AskStatus():
                    self._first_ask = await self._send_status(link, store)
                case sync.SendIntent(intent_id):
                    await self._send_intent(intent_id, link, store)

    async def _send_intent(self, intent_id: str, link: Link, store: Store) -> None:
        row = await store.intent(intent_id)
        if row is None or row.receipted_at is not None:
            return  # receipted meanwhile
        vid = self.config.vid
        seq = await store.next_seq()
        body = intents.body(row.type, intent_id, json.loads(row.fields), vid, seq)
        topic = topics.up(vid, intents.INTENT_TYPES[row.type])  # type: ignore[arg-type]
        await link.publish(topic, self._signer.seal(topic, messages.encode(body)))
        self.intent_events["sent"] += 1
        async with self._changed:
            self._changed.notify_all()  # the resend timer starts once something is in flight
        log.debug("%s: %s %s sent as seq %d", vid, row.type, intent_id, seq)

    async def _resend(self, link: Link, store: Store) -> None:
        """Send intents again, backing off, while their receipts do not come."""
        retry = Backoff(self.config.reply_timeout_s, self.config.status_interval_s)
        attempt = 0
        while True:
            async with self._changed:
                await self._changed.wait_for(
                    lambda: self.sync.phase is sync.Phase.LIVE and self.sync.awaiting_receipts
                )
            seen = self.intent_events["receipted"]
            await asyncio.sleep(max(retry.min_s, retry.delay(attempt, self._rng.random())))
            if self.intent_events["receipted"] != seen:
                attempt = 0  # the cloud answers: give the rest their time
                continue
            if self.sync.phase is sync.Phase.LIVE and self.sync.awaiting_receipts:
                attempt += 1
                commands = self.sync.handle(sync.RetryDue())
                self.intent_events["resent"] += len(commands)
                await self._apply(commands, link, store)

    async def request_renewal(self, action: str, quote_id: str | None = None) -> str:
        """Record a ``renewal.request`` intent durably and send it; return its intent id."""
        return await self._record("renewal.request", intents.renewal_fields(action, quote_id))

    async def report_event(self, event: str, detail: str | None = None) -> str:
        """Record a ``vehicle.event`` intent durably and send it; return its intent id.

        The event carries the earliest instant trusted time allows (none without it).
        """
        now = self.trusted_now()
        fields = intents.event_fields(event, None if now is None else now.earliest, detail)
        return await self._record("vehicle.event", fields)

    async def _record(self, type_: str, fields: dict[str, object]) -> str:
        """Commit the intent to the outbox, then send it if the session is live.

        Raise BodyError when it breaks the contract, NotRunningError without a store;
        once this returns the intent is on disk and reaches the cloud exactly once.
        """
        store = self._store
        if store is None:
            raise NotRunningError()
        intent_id = intents.new_id()
        stored = intents.check(type_, intent_id, fields, self.config.vid)
        await store.add_intent(intent_id, type_, stored, self._clock.now())
        self.intent_events["recorded"] += 1
        commands = self.sync.handle(sync.IntentQueued(intent_id, type_))
        async with self._changed:
            self._changed.notify_all()
        link = self._link
        if commands and link is not None:
            try:
                await self._apply(commands, link, store)
            except AgentError as exc:  # on disk: sent again on the next session
                self.intent_events["send_failed"] += 1
                log.info("%s: intent %s not sent now: %s", self.config.vid, intent_id, exc)
        return intent_id

    async def outbox(self) -> tuple[int, int]:
        """(pending, receipted) intent counts; raise NotRunningError when not running."""
        if self._store is None:
            raise NotRunningError()
        return await self._store.outbox_counts()

    async def _watch_stop(self) -> None:
        await self._stopping.wait()
        raise _StopRequested

    async def _watch_reconnect(self) -> None:
        await self._reconnect.wait()
        raise _ReconnectRequested

    async def _report(self, link: Link, store: Store) -> None:
        """Ask on connect and every status interval; ask again, backing off, while unanswered.

        The broker may drop a request or its reply (no cloud worker subscribed yet, a full
        queue), so a request counts as answered only when a verified state replying to
        it (or to a later one) has been accepted.
        """
        retry = Backoff(self.config.reply_timeout_s, self.config.status_interval_s)
        attempt = 0
        seq = self._first_ask  # the sync machine asked on connect
        while True:
            if seq is None:
                seq = await self._send_status(link, store)
            # A reply always gets reply_timeout_s; full jitter spreads only the extra wait.
            wait_s = max(retry.min_s, retry.delay(attempt, self._rng.random()))
            answered = await self._answered(seq, wait_s)
            if self.sync.phase is sync.Phase.SYNCING:
                event = sync.StateAnswered() if answered else sync.AskTimedOut()
                await self._apply(self.sync.handle(event), link, store)
            if answered:
                attempt = 0
                await asyncio.sleep(self.config.status_interval_s)
            else:
                attempt += 1
                self.counters["unanswered"] += 1
                log.info("%s: status.request seq %d unanswered; asking again", self.config.vid, seq)
            seq = None

    async def _answered(self, seq: int, timeout_s: float) -> bool:
        def replied() -> bool:
            held = self._state
            return held is not None and held.reply_to is not None and held.reply_to >= seq

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(replied)
        except TimeoutError:
            return False
        return True

    async def _send_status(self, link: Link, store: Store) -> int:
        seq = await store.next_seq()
        topic = topics.up(self.config.vid, "status")
        body = messages.encode(StatusRequest(vid=self.config.vid, seq=seq))
        self._sent[seq] = self._clock.monotonic()
        while len(self._sent) > SENT_KEPT:
            del self._sent[min(self._sent)]
        await link.publish(topic, self._signer.seal(topic, body))
        log.debug("%s: status.request seq %d sent", self.config.vid, seq)
        return seq

    async def _receive(self, link: Link, store: Store) -> None:
        async for received in link.messages():
            await self._handle(received, store)
        raise LinkError("message stream ended", reason="dropped")

    async def _handle(self, received: Received, store: Store) -> None:
        vid = self.config.vid
        try:
            outcome = inbox.read(vid, self.trusted_keys(), received.topic, received.payload)
        except Exception as exc:  # a bug must not let one bad message stop the car
            outcome = inbox.Dropped("internal", repr(exc))
        if isinstance(outcome, inbox.Dropped):
            self._count_drop(outcome.reason, outcome.detail, received.topic)
            if outcome.reason == "unknown_key":
                self._keys_wanted.set()  # perhaps a rolled signing key: fetch the key set
            return
        body = outcome.body
        if isinstance(body, IntentReceipt):
            await self._note_receipt(outcome.topic, outcome.payload, body, store)
            return
        if isinstance(body, RenewalUpdate):
            if await store.save_renewal(
                outcome.topic, outcome.payload, body.seq, self._clock.now()
            ):
                self._renewal = body
                self.counters["renewal_update"] += 1
                self._trusted.raise_floor(body.issued_at)
                self.head_unit.poke()
            else:
                self._count_drop("replay", "renewal update not newer than held", received.topic)
            return
        if isinstance(body, ErrorReply):
            await store.save_error(outcome.topic, outcome.payload, body, self._clock.now())
            self._last_error = body
            self.counters["error_reply"] += 1
            log.warning(
                "%s: cloud error %s (request %s): %s", vid, body.code, body.reply_to, body.message
            )
            return
        decision = decide(body, self._state, vid)
        if isinstance(decision, Refuse):
            self._count_drop(decision.reason, decision.detail, received.topic)
        elif isinstance(decision, Duplicate):
            self.counters["duplicate"] += 1
        elif isinstance(decision, Accept):
            stored = await store.save_policy(
                outcome.topic, outcome.payload, decision.state, self._clock.now()
            )
            if not stored:
                self._count_drop("rollback", "older than the stored record", received.topic)
                return
            self.counters["accepted"] += 1
            await self._note_time(decision.state, store)
            await self._hold(decision.state)
            log.info(
                "%s: policy state v%d seq %d accepted (%s)",
                vid,
                body.version,
                body.seq,
                body.status,
            )

    async def _note_receipt(
        self, topic: str, payload: bytes, receipt: IntentReceipt, store: Store
    ) -> None:
        """Store a verified receipt beside its intent; the intent is then done."""
        self._trusted.raise_floor(receipt.issued_at)
        if not await store.save_receipt(receipt.intent_id, topic, payload, self._clock.now()):
            self.intent_events["receipt_repeated"] += 1
            return
        self.intent_events["receipted"] += 1
        self.sync.handle(sync.ReceiptReceived(receipt.intent_id))
        async with self._changed:
            self._changed.notify_all()
        log.debug("%s: intent %s receipted", self.config.vid, receipt.intent_id)

    async def _note_time(self, state: PolicyState, store: Store) -> None:
        """Anchor trusted time on a reply to this run's request; else raise the floor only."""
        received = self._clock.monotonic()
        sent = None if state.reply_to is None else self._sent.get(state.reply_to)
        if sent is None:
            self._trusted.raise_floor(state.issued_at)
            self.time_events["floor"] += 1
        elif self._trusted.anchor(state.issued_at, sent, received):
            self.time_events["anchored"] += 1
            await self._save_anchor(store)
        else:
            self.time_events["refused"] += 1
            log.warning(
                "%s: issued_at %s is below the trusted-time floor %s; time not moved back",
                self.config.vid,
                state.issued_at.isoformat(),
                self._trusted.floor,
            )
        await self._save_floor(store)

    async def _save_anchor(self, store: Store) -> None:
        """Persist the anchor with this boot's id; a failure is logged, never fatal."""
        anchor, boot = self._trusted.last_anchor, current_boot_id()
        if anchor is None or boot is None:
            return
        try:
            await store.save_anchor(boot, anchor)
        except StoreError as exc:
            log.warning("%s: cannot persist the trusted-time anchor: %s", self.config.vid, exc)

    async def _save_floor(self, store: Store) -> None:
        """Persist the trusted-time floor as of now; a failure is logged, never fatal."""
        floor = self._trusted.settle(self._clock.monotonic())
        if floor is None:
            return
        try:
            await store.raise_trusted_floor(floor)
        except StoreError as exc:
            log.warning("%s: cannot persist the trusted-time floor: %s", self.config.vid, exc)

    async def _save_floor_periodically(self, store: Store) -> None:
        while True:
            await asyncio.sleep(self.config.trusted_floor_save_s)
            await self._save_floor(store)

    async def _serve_head_unit(self) -> None:
        """Serve the head-unit page and API when ``head_unit_port`` is set."""
        port = self.config.head_unit_port
        if port is None:
            return

        def ready(url: str) -> None:
            self.head_unit_url = url
            log.info("%s: head unit at %s", self.config.vid, url)

        await head_unit_http.serve(
            self.head_unit,
            self.config.head_unit_host,
            port,
            ready=ready,
            counters=self.head_unit_requests,
        )

    async def _hold(self, state: PolicyState) -> None:
        self._state = state
        async with self._changed:
            self._changed.notify_all()
        self.head_unit.poke()

    def _count_drop(self, reason: str, detail: str, topic: str) -> None:
        """Count every drop; log the first of a reason, then a count a minute (drop_log)."""
        self.counters[reason] += 1
        now = self._clock.monotonic()
        self._log_drops(self._drops.due(now))
        if self._drops.dropped(reason, now):
            log.warning(
                "%s: dropped message on %.128s: %s: %.256s (more of these: one line a minute)",
                self.config.vid,
                topic,
                reason,
                detail,
            )

    def _log_drops(self, summaries: list[drop_log.Summary]) -> None:
        for s in summaries:
            log.warning(
                "%s: dropped %d more messages (%s) in the last %.0f s; %d since start",
                self.config.vid,
                s.count,
                s.reason,
                s.seconds,
                self.counters[s.reason],
            )

    async def _log_drops_periodically(self) -> None:
        while True:
            await asyncio.sleep(DROP_LOG_TICK_S)
            self._log_drops(self._drops.due(self._clock.monotonic()))


def _bus_of(config: AgentConfig) -> VehicleBus | None:
    """The vehicle bus the config names (python-OBD is imported only for ``obd``)."""
    if config.bus == "simulated":
        return SimulatedBus()
    if config.bus == "obd":
        from .obd_bus import ObdBus

        assert config.obd_port is not None  # the config checks it
        try:
            return ObdBus(config.obd_port, baudrate=config.obd_baudrate)
        except ValueError as exc:
            raise ConfigError(f"obd: {exc}") from exc
    return None
