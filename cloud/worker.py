"""The cloud request worker: the asyncio shell around RequestHandler.

Requests arrive through the shared subscription and queue in memory. One flush at a
time takes everything queued, runs it through the handler, writes the changed
counters in one transaction (group commit), and only then publishes the replies:
a reply is never sent for a ``seq`` the store could forget.

It signs replies with the newest key of the signing-key ring (``cloud.signing_keys``),
read at start: a rolled ring takes effect when the process restarts.

With ``http_port`` configured, the HTTPS API (``cloud.api``) runs beside it in the
same loop, on its own store connection, and tells the worker of enrolled, renewed
and revoked vehicles (the worker is its ``VehicleEvents``).
"""

import asyncio
import contextlib
import dataclasses
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Final

from agent.protocol import messages, topics
from agent.protocol.clock import Clock, SystemClock
from agent.protocol.envelope import Signer
from agent.protocol.keys import PublicKey, kid_for, load_public_key

from .config import CloudConfig
from .errors import LinkError, StoreError
from .fleet_monitor import FleetMonitor
from .handler import CounterRow, IntentRow, Reply, RequestHandler, VehicleState
from .link import MqttLink, tls_context
from .ops import LatencyHistogram, WorkerSnapshot, source_health
from .pki import CertificateAuthority
from .policy import PolicyRecord
from .renewal_flow import Flow, FlowError
from .renewals import RenewalService, update_body
from .revocation import BrokerControl, sighup_from_pid_file
from .signing_keys import load_signing_keys
from .sources_config import LookupAdapter, build_sources
from .store import Store, StoredVehicle, vin_digest_of
from .webhooks import WebhookError, order_paid, verify

log = logging.getLogger(__name__)
RECONNECT_CAP_S = 30.0
PRESENCE_FILTER: Final = f"{topics.PREFIX}/+/presence"
"""Every car's retained ``online``/``offline``: read (not shared) to count connected cars."""
_PRESENCE_SUFFIX: Final = "/presence"
CLAIM_LEASE: Final = timedelta(minutes=2)
"""A renewal intent claimed by a worker that died is taken over after this long."""
SHARED_FOR_S: Final = 600.0
"""After a sign of another worker writing (a refused write, counters adopted), read each
batch's vehicles from the store first for this long."""
RENEWAL_POLL_S: Final = 30.0
_WEBHOOK_STATUS: Final = {
    "unknown_order": 404,
    "wrong_insurer": 403,
    "order_unavailable": 503,
}
"""HTTP status of a refused webhook by its code; any other refusal is 409 (a conflict with
the insurer's own record or the flow). 503 makes the insurer deliver again later."""
"""The renewal loop looks for intents this often even when nothing woke it."""


def _vid_of(topic: str) -> str:
    """The vid segment of a ``ctpl/v1/{vid}/…`` topic (whatever it holds)."""
    return topic[len(topics.PREFIX) + 1 :].split("/", 1)[0]


def _no_reload() -> None:
    log.warning("no --broker-pid-file: the broker reads the new CRL only when restarted")


class Worker:
    """One cloud worker process's request loop; ``run()`` until cancelled."""

    def __init__(self, config: CloudConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.ready = asyncio.Event()
        self.api_ready = asyncio.Event()
        self.counters: Counter[str] = Counter()
        self.worker_id = f"{config.client_id}-{secrets.token_hex(4)}"
        """Names this process's claims on shared work (renewal intents)."""
        # Read once: a rolled ring is picked up when the process restarts.
        self.signing_keys = load_signing_keys(config)
        self._signer = Signer(self.signing_keys.newest)
        self._inbox: list[tuple[str, bytes]] = []
        self._outbound: list[Reply] = []
        """Cloud-initiated messages (renewal updates, pushed states) for the next commit."""
        self._renewal_wake = asyncio.Event()
        self.renewals: RenewalService | None = None
        self.monitor: FleetMonitor | None = None
        """Raises fleet alerts and delivers them to the fleets' webhooks (cloud.fleet_monitor)."""

        self._wake = asyncio.Event()
        self.handler: RequestHandler | None = None
        self._store: Store | None = None
        self._counters_store: Store | None = None
        self._broker_control: BrokerControl | None = None
        self._link: MqttLink | None = None
        self.latency = LatencyHistogram()
        """Per request: start of its batch's handling until its reply goes to the link."""
        self._online: set[str] = set()
        """Vids whose retained presence says ``online``."""
        self._shared_until = 0.0
        """Until then (monotonic s) each batch's vehicles are read from the store first:
        another worker wrote counters lately. Alone, a worker reads only vehicles it
        does not know (enrolled through another worker's API)."""

    def _receive(self, topic: str, payload: bytes) -> None:
        if topic.endswith(_PRESENCE_SUFFIX):
            self._presence(topic, payload)
            return
        self._inbox.append((topic, payload))
        self._wake.set()

    def _presence(self, topic: str, payload: bytes) -> None:
        vid = topic[len(topics.PREFIX) + 1 : -len(_PRESENCE_SUFFIX)]
        if topics.VID_RE.fullmatch(vid) is None:
            return
        if payload == b"online":
            self._online.add(vid)
        else:  # offline, or the retained message cleared
            self._online.discard(vid)

    def ops_snapshot(self) -> WorkerSnapshot:
        """Copies of the counters and gauges, for ``/metrics``."""
        renewals = self.renewals
        lookup = renewals.lookup if renewals is not None else None
        registry = lookup.registry if isinstance(lookup, LookupAdapter) else None
        return WorkerSnapshot(
            connected=self.ready.is_set(),
            handler=dict(self.handler.counters) if self.handler is not None else {},
            worker=dict(self.counters) | self._monitor_counters(),
            renewals=dict(renewals.counters) if renewals is not None else {},
            sources=source_health(registry),
            source_counters=dict(registry.counters) if registry is not None else {},
            latency=self.latency.snapshot(),
            connected_cars=len(self._online),
            vehicles=len(self.handler.vehicles) if self.handler is not None else 0,
            inbox=len(self._inbox),
            publish_failures=self._link.publish_failures if self._link is not None else 0,
        )

    def _monitor_counters(self) -> dict[str, int]:
        monitor = self.monitor
        return {} if monitor is None else {f"fleet.{k}": v for k, v in monitor.counters.items()}

    async def run(self) -> None:
        """Load the store, connect, and serve requests until cancelled."""
        store = await Store.open(self.config.store_target, self.config.data_key_file)
        # The hot path's own connection: counters only, so its commits never wait on
        # (or fold into) a transaction of the hooks that use ``store``.
        counters_store = await Store.open(self.config.store_target, self.config.data_key_file)
        try:
            self.handler = RequestHandler(
                vehicles=await store.load_vehicles(),
                policies=await store.load_policies(),
                fresh_for=timedelta(seconds=self.config.fresh_for_s),
                expiring_within_days=self.config.expiring_within_days,
            )
            log.info("loaded %d vehicles", len(self.handler.vehicles))
            self._store = store
            self._counters_store = counters_store
            self._broker_control = self._make_broker_control()
            if self._broker_control is not None:
                # The CRL the broker reads must match the store, and must not expire.
                await self._broker_control.publish_crl(await store.revoked_serials())
            link = MqttLink(
                client_id=self.config.client_id,
                tls=tls_context(self.config.ca_file, self.config.cert_file, self.config.key_file),
                on_message=self._receive,
                subscriptions=(topics.CLOUD_SHARED_SUBSCRIPTION, PRESENCE_FILTER),
                # A clean session: a worker that is gone must not stay in the share
                # group, or the broker would keep queueing its share of requests.
                clean_start=True,
                keepalive_s=self.config.keepalive_s,
            )
            self._link = link
            self.renewals = RenewalService(
                store, *build_sources(self.config), notifier=self, now=self.clock.now
            )
            self.monitor = FleetMonitor(store, self.config, self.clock.now)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flush_loop(counters_store, link), name="cloud-flush")
                tg.create_task(self._renewal_loop(self.renewals), name="cloud-renewals")
                tg.create_task(self._connection_loop(link), name="cloud-connection")
                tg.create_task(self.monitor.run(), name="cloud-fleet-monitor")
                if self.config.http_port is not None:
                    tg.create_task(self._serve_api(), name="cloud-api")
                if self._broker_control is not None:
                    tg.create_task(
                        self._broker_control.refresh_every(store.revoked_serials),
                        name="cloud-crl-refresh",
                    )
        finally:
            self._store = self._counters_store = None
            await counters_store.close()
            await store.close()

    async def _serve_api(self) -> None:
        # Imported here: a worker without the API does not pay for FastAPI.
        from .api import create_app, serve_api

        store = await Store.open(self.config.store_target, self.config.data_key_file)
        try:
            app = create_app(
                self.config,
                store,
                self,
                clock=self.clock,
                signing_keys=self.signing_keys,
                ops=self,
            )
            await serve_api(app, self.config, ready=self.api_ready)
        finally:
            await store.close()

    async def vehicle_registered(self, vid: str, key: PublicKey) -> None:
        """Serve ``vid`` (enrolled or renewed) with ``key`` from now on; its counters stay."""
        assert self.handler is not None
        state = self.handler.vehicles.get(vid)
        if state is None:
            state = self.handler.vehicles[vid] = VehicleState(kid=kid_for(key), key=key)
        else:
            state.kid, state.key = kid_for(key), key
        if self._store is not None:
            row = await self._store.vehicle(vid)
            state.vin_digest = vin_digest_of(vid, None if row is None else row.vin)
        if vid not in self.handler.policies and self._store is not None:
            record = await self._store.adopt_policy_seed(vid)
            if record is not None:
                self.handler.policies[vid] = record

    async def vehicle_revoked(self, vid: str) -> None:
        """Refuse ``vid``'s messages from now on, and cut it off the broker."""
        assert self.handler is not None
        self.handler.vehicles.pop(vid, None)
        self.handler.dirty.discard(vid)
        if self._broker_control is not None and self._store is not None:
            await self._broker_control.revoke(vid, await self._store.revoked_serials())

    async def _renewal_loop(self, service: RenewalService) -> None:
        """Act on recorded renewal requests, each once; first what a crash left half done.

        Each intent is claimed first (``Store.claim_intents``): of several workers sharing
        the store, one acts on it; a claim of a worker that died lapses after CLAIM_LEASE.
        """
        await service.resume()
        while True:
            assert self._store is not None
            claimed = await self._store.claim_intents(
                "renewal.request", self.worker_id, self.clock.now(), CLAIM_LEASE
            )
            for row in claimed:
                try:
                    await service.handle_intent(row)
                except Exception:  # one bad flow must not stop the others
                    log.exception("renewal request %s failed", row.intent_id)
                    self.counters["renewal.internal_error"] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RENEWAL_POLL_S):
                    await self._renewal_wake.wait()
            self._renewal_wake.clear()

    async def operator_renewal(self, vid: str, intent_id: str) -> bool:
        """Start a renewal (quotes to the car) for ``vid`` as if the car had asked.

        Recorded as a ``renewal.request`` intent under ``intent_id``: True if new, False if
        that intent was recorded already (the operator's request repeated).
        """
        assert self._counters_store is not None
        body = messages.RenewalRequest(vid=vid, seq=1, intent_id=intent_id, action="quote")
        row = IntentRow(vid, intent_id, body.type, messages.encode(body), 0, self.clock.now())
        saved = await self._counters_store.save_counters([], [row])
        self.counters["renewal.operator"] += saved.new_intents
        self._renewal_wake.set()
        return saved.new_intents == 1

    async def force_refresh(self, vid: str) -> str:
        """Re-query ``vid``'s policy at the sources now.

        ``updated`` (stored and pushed to the car), ``unchanged`` or ``unavailable``.
        """
        if self.renewals is None:
            return "unavailable"
        return await self.renewals.refresh_policy(vid)

    async def renewal_changed(self, flow: Flow, error: FlowError | None = None) -> None:
        """Tell the car where its renewal stands (published after the next commit)."""
        assert self.handler is not None
        handler, now = self.handler, self.clock.now()
        await self._reconcile([flow.vid])

        def issue() -> Reply | None:
            return handler.push(
                flow.vid, "renewal", lambda seq: update_body(flow, flow.vid, seq, now, error)
            )

        self._send(issue)

    async def policy_changed(self, record: PolicyRecord) -> None:
        """Serve ``record`` from now on and push the car its new state (retained)."""
        assert self.handler is not None
        handler = self.handler
        await self._reconcile([record.vid])
        handler.set_policy(record.vid, record)
        self._send(lambda: handler.push_state(record.vid, self.clock.now()))

    def _send(self, issue: "Callable[[], Reply | None]") -> None:
        """Queue a cloud-initiated message for the next commit (issued again on a conflict)."""
        reply = issue()
        if reply is not None:
            self._outbound.append(dataclasses.replace(reply, again=issue))
            self._wake.set()

    async def _reconcile(self, vids: Iterable[str], force: frozenset[str] = frozenset()) -> None:
        """Bring ``vids`` in memory up to what the store holds (other workers share it).

        Learns enrollments, re-keys and revocations made through another worker's API, and
        counters another worker wrote (then the policy too, if the content it told changed).
        Counters this worker wrote and has not yet seen land are kept, unless in ``force``
        (a write of them was refused: the store is the truth).
        """
        store, handler = self._counters_store, self.handler
        wanted = list(dict.fromkeys(vids))
        if store is None or handler is None or not wanted:
            return
        stored = await store.reload_vehicles(wanted)
        for vid in wanted:
            if self._adopt(vid, stored.get(vid), vid in force):
                record = (await store.load_policies(vid)).get(vid)
                handler.set_policy(vid, record)

    def _adopt(self, vid: str, sv: StoredVehicle | None, force: bool) -> bool:
        """Adopt the stored ``sv`` for ``vid``; True if its policy must be read again."""
        handler = self.handler
        assert handler is not None
        v = handler.vehicles.get(vid)
        if sv is None or sv.revoked:
            if v is not None:
                del handler.vehicles[vid]
                handler.dirty.discard(vid)
            return False
        if v is None:
            v = handler.vehicles[vid] = VehicleState(
                kid=sv.kid, key=load_public_key(sv.public_key_pem),
                vin_digest=vin_digest_of(vid, sv.vin),
            )  # fmt: skip
            v.adopt(sv.last_seq, sv.down_seq, sv.version, sv.content_key)
            return True
        if v.kid != sv.kid:
            v.kid, v.key = sv.kid, load_public_key(sv.public_key_pem)
        ahead = sv.last_seq > v.stored[0] or sv.down_seq > v.stored[1]
        if not (force or ahead):
            return False
        told_other = sv.content_key != v.content_key
        v.adopt(sv.last_seq, sv.down_seq, sv.version, sv.content_key)
        self.counters["counters.adopted"] += 1
        self._shared_until = time.monotonic() + SHARED_FOR_S
        return told_other

    async def insurer_webhook(
        self, code: str, body: bytes, timestamp: str | None, signature: str | None
    ) -> tuple[int, dict[str, str]]:
        """An insurer's signed delivery: (HTTP status, JSON answer). Never raises."""
        secret = self.webhook_secrets.get(code)
        try:
            if secret is None:
                raise WebhookError(404, "unknown_insurer", "no such insurer")
            verify(secret, timestamp, signature, body, self.clock.now())
            order_id, issued = order_paid(body, code)
            if self.renewals is None:
                raise WebhookError(503, "not_ready", "the worker is starting")
            flow = await self.renewals.paid(code, order_id, issued)
        except WebhookError as exc:
            self.counters[f"webhook.{exc.code}"] += 1
            return exc.status, {"error": exc.code, "message": str(exc)}
        except FlowError as exc:
            self.counters[f"webhook.{exc.code}"] += 1
            log.warning("insurer webhook from %s refused: %s", code, exc.code)
            return _WEBHOOK_STATUS.get(exc.code, 409), {"error": exc.code, "message": str(exc)}
        self.counters["webhook.ok"] += 1
        return 200, {"ok": "true", "renewal_id": flow.renewal_id, "stage": flow.stage.value}

    @property
    def webhook_secrets(self) -> dict[str, bytes]:
        """Per insurer code, the secret its webhooks are signed with."""
        return {i.code: i.webhook_secret.get_secret_value().encode() for i in self.config.insurers}

    def _make_broker_control(self) -> BrokerControl | None:
        c = self.config
        if c.crl_file is None or c.ca_key_file is None:
            if c.http_port is not None:
                log.warning("no CRL file or CA key: revocations will not reach the broker")
            return None
        reload = sighup_from_pid_file(c.broker_pid_file) if c.broker_pid_file else _no_reload
        return BrokerControl(
            ca=CertificateAuthority.load(c.ca_file, c.ca_key_file),
            crl_path=c.crl_file,
            reload=reload,
        )

    async def _connection_loop(self, link: MqttLink) -> None:
        attempt = 0
        try:
            while True:
                try:
                    await link.connect(self.config.broker_host, self.config.broker_port)
                except LinkError as exc:
                    attempt += 1
                    delay = random.uniform(0, min(RECONNECT_CAP_S, 0.5 * 2**attempt))  # noqa: S311
                    log.warning("broker link: %s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                attempt = 0
                log.info("connected to %s:%d", self.config.broker_host, self.config.broker_port)
                self.ready.set()
                await link.wait_disconnected()
                self.ready.clear()
                self._online.clear()  # the broker sends every retained presence on reconnect
                self.counters["link.lost"] += 1
                log.warning("broker link lost")
        finally:
            await link.close()

    async def _flush_loop(self, store: Store, link: MqttLink) -> None:
        """Handle queued requests batch by batch; commit each batch, then publish its replies.

        Batch N+1 is handled while batch N's commit is under way; commits run in order
        on the store's one connection, and each batch's replies wait for their own commit.
        """
        assert self.handler is not None
        handler = self.handler
        previous: asyncio.Task[None] | None = None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                batch, self._inbox = self._inbox, []
                if not batch and not self._outbound:
                    continue
                started = time.perf_counter()
                if batch:
                    vids = {_vid_of(topic) for topic, _ in batch}
                    if time.monotonic() >= self._shared_until:  # alone, as far as we know
                        vids = {v for v in vids if v not in handler.vehicles}
                    await self._reconcile(vids)
                pushed, self._outbound = self._outbound, []
                replies = self._handle_batch(handler, batch) + pushed
                dirty, handler.dirty = handler.dirty, set()
                rows = [handler.vehicles[vid].row(vid) for vid in dirty if vid in handler.vehicles]
                intents, handler.intents = handler.intents, []
                previous = asyncio.create_task(
                    self._commit_then_publish(
                        store, link, rows, intents, replies, previous, (started, len(batch))
                    ),
                    name="cloud-commit",
                )
                # Let the commit start, and give the link a turn to read more requests.
                await asyncio.sleep(0)
        finally:
            if previous is not None:
                await asyncio.wait([previous], timeout=5.0)

    async def _lost_to_another_worker(
        self, replies: list[Reply], conflicts: frozenset[str]
    ) -> list[Reply]:
        """The replies that may still go; reload the vehicles whose counters did not land.

        A request's reply is dropped (the car asks again); a cloud-initiated message is
        issued afresh under the stored counters.
        """
        self.counters["counters.conflicts"] += len(conflicts)
        self._shared_until = time.monotonic() + SHARED_FOR_S
        await self._reconcile(conflicts, force=conflicts)
        for reply in replies:
            if reply.vid in conflicts and reply.again is not None:
                self._send(reply.again)
        return [r for r in replies if r.vid not in conflicts]

    def _handle_batch(self, handler: RequestHandler, batch: list[tuple[str, bytes]]) -> list[Reply]:
        now = self.clock.now()
        replies: list[Reply] = []
        for topic, payload in batch:
            try:
                reply = handler.handle(topic, payload, now)
            except Exception:  # never let one request take the worker down
                log.exception("handler failed on a request")
                self.counters["internal_error"] += 1
                continue
            if reply is not None:
                replies.append(reply)
        return replies

    async def _commit_then_publish(
        self,
        store: Store,
        link: MqttLink,
        rows: list[CounterRow],
        intents: list[IntentRow],
        replies: list[Reply],
        previous: "asyncio.Task[None] | None",
        timing: tuple[float, int] = (0.0, 0),
    ) -> None:
        """``timing``: when the batch's handling started, and how many requests it held."""
        saved = True
        if rows or intents:
            try:
                result = await store.save_counters(rows, intents)
                new = result.new_intents
                offered = sum(1 for i in intents if i.vid not in result.conflicts)
                self.counters["intents.new"] += new
                self.counters["intents.repeated"] += offered - new
                if any(i.type == "renewal.request" for i in intents):
                    self._renewal_wake.set()
                if result.conflicts:
                    replies = await self._lost_to_another_worker(replies, result.conflicts)
            except StoreError:
                log.exception("cannot persist counters; dropping %d replies", len(replies))
                self.counters["store_error"] += 1
                saved = False
        if previous is not None:
            await previous  # publish in batch order
        if not saved:
            return
        for reply in replies:
            body = messages.encode(reply.body)
            link.publish(reply.topic, self._signer.seal(reply.topic, body), retain=reply.retain)
        self.counters["batches"] += 1
        self.counters["replies"] += len(replies)
        started, requests = timing
        if requests:
            self.latency.observe(time.perf_counter() - started, requests)
