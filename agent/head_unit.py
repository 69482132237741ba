"""The head unit's model: what the driver sees, prompts and answers, vehicle signals.

``HeadUnit`` is the thin shell around the pure ``reminders`` engine: it polls the
vehicle bus (``vehicle.Signals`` infers ignition, counts trips in the store, reports
transitions as ``vehicle.event`` intents), checks the VIN the car reports against the
policy's digest, asks ``reminders.decide`` whenever something changed, records a prompt
before showing it (so a restart never repeats a stage), and turns the driver's answers
into intents. ``snapshot()`` is everything a screen shows, as JSON-ready data in both
languages (its parts built by ``screen``); ``changes()`` yields it again on every change
(the HTTP layer streams it).

Nothing is shown that is not backed by a verified, cloud-signed state: status and
prompts come from ``display.view`` (trusted time), the e-policy card from the verified
state's own fields.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, timedelta
from typing import Any, Final, Protocol

from . import display, reminders, screen, texts
from .errors import AgentError
from .protocol.calendar import china_date
from .protocol.messages import PolicyState, RenewalUpdate
from .protocol.vin import vin_digest
from .reminders import Alerted, Prompt, Shown
from .screen import OnScreen
from .store import Store
from .vehicle import Signals, VehicleBus

log = logging.getLogger(__name__)

EVALUATE_EVERY_S: Final = 60.0
"""Decide again at least this often (days and stages change with time alone)."""
RENEWAL_SHOWN_FOR: Final = timedelta(hours=24)
"""A renewal update older than this (in trusted time) is no longer shown."""


class AnswerError(AgentError):
    """A driver's answer that cannot be taken; ``code`` is ``stale_prompt`` or ``bad_answer``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentPort(Protocol):
    """What the head unit needs of the agent."""

    @property
    def vid(self) -> str:
        """The car's vid."""
        ...

    @property
    def state(self) -> PolicyState | None:
        """The verified policy state held."""
        ...

    @property
    def connected(self) -> bool:
        """Whether the link is up."""
        ...

    @property
    def renewal(self) -> RenewalUpdate | None:
        """The newest verified renewal update."""
        ...

    def status_view(self) -> display.StatusView | display.Unverified:
        """What may be shown now, judged in trusted time."""
        ...

    async def report_event(self, event: str, detail: str | None = None) -> str:
        """Record a vehicle.event intent."""
        ...

    async def request_renewal(self, action: str, quote_id: str | None = None) -> str:
        """Record a renewal.request intent."""
        ...


class HeadUnit:
    """One car's head-unit model; ``run(store)`` while the agent runs."""

    def __init__(
        self,
        agent: AgentPort,
        *,
        lang: texts.Lang = "zh-CN",
        config: reminders.ReminderConfig | None = None,
        bus: VehicleBus | None = None,
        poll_s: float = 1.0,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.agent = agent
        self.lang: texts.Lang = lang
        self.config = config or reminders.ReminderConfig()
        self.bus = bus
        self.poll_s = poll_s
        self.signals = Signals()
        self.decisions: list[reminders.Decision] = []
        """Every decision taken, newest last (kept short): for tests and diagnosis."""
        self._wall = wall_clock or (lambda: datetime.now().astimezone())
        self._store: Store | None = None
        self._history: list[Shown | Alerted] = []
        self._on_screen: OnScreen | None = None
        self._vin_digest: str | None = None
        self._mismatch_reported: tuple[int, str] | None = None
        self._lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._version = 0
        self._changed = asyncio.Condition()
        self._shown: tuple[object, ...] = ()

    # ---- what the screen shows -------------------------------------------------------

    @property
    def on_screen(self) -> OnScreen | None:
        """The prompt on screen now, if any."""
        return self._on_screen

    @property
    def vin_mismatch(self) -> bool:
        """Whether the VIN the car reports is not the insured vehicle's."""
        state = self.agent.state
        want = None if state is None else state.vin_digest
        return self._vin_digest is not None and want is not None and self._vin_digest != want

    def snapshot(self) -> dict[str, Any]:
        """Everything the head unit shows now, JSON-ready (see docs/head-unit.md)."""
        view = self.agent.status_view()
        shown: dict[str, Any] = {"version": self._version, "lang": self.lang}
        if self.vin_mismatch:
            status, days, end, insurer = "mismatch", None, None, None
        elif isinstance(view, display.Unverified):
            status, days, end, insurer = "unverified", None, None, None
            shown["reason"] = view.reason
        else:
            status, days, end = view.status, view.days_left, view.coverage_end
            insurer = view.insurer
        starts = view.starts_at if isinstance(view, display.StatusView) else None
        shown |= {
            "status": status,
            "days_left": days,
            "coverage_end": None if end is None else end.isoformat(),
            "starts_at": None if starts is None or status != "pending" else starts.isoformat(),
            "insurer": insurer,
            "texts": {
                lang: texts.status_text(status, lang, days_left=days, end=end, starts_at=starts)
                for lang in texts.LANGS
            },
            "prompt": screen.prompt_json(self._on_screen),
            "renewal": screen.renewal_json(self.current_renewal()),
            "card": screen.card_json(self.agent.state),
            "vehicle": {
                "ignition_on": self.signals.ignition_on,
                "moving": self.signals.moving,
                "speed_kmh": self.signals.speed_kmh,
                "trip": self.signals.trip,
            },
            "online": self.agent.connected,
        }
        return shown

    def current_renewal(self) -> RenewalUpdate | None:
        """The renewal update to show: verified, and issued within RENEWAL_SHOWN_FOR."""
        renewal = self.agent.renewal
        view = self.agent.status_view()
        if renewal is None or isinstance(view, display.Unverified):
            return None
        now = view.time.latest or view.time.earliest
        if now - renewal.issued_at > RENEWAL_SHOWN_FOR:
            return None
        return renewal

    async def accept_quote(self, quote_id: str) -> str:
        """The driver chose a quote: send the signed consent naming it; return the intent id.

        Raise AnswerError (``unknown_quote``, ``quote_expired``) when it cannot be taken.
        """
        renewal = self.current_renewal()
        quotes = {} if renewal is None else {q.quote_id: q for q in renewal.quotes}
        quote = quotes.get(quote_id)
        if quote is None:
            raise AnswerError("unknown_quote", "no such quote on screen")
        view = self.agent.status_view()
        if isinstance(view, display.StatusView) and view.time.earliest >= quote.expires_at:
            raise AnswerError("quote_expired", "the quote has expired; ask for new quotes")
        intent = await self.agent.request_renewal("accept", quote_id)
        await self._publish()
        return intent

    async def changes(self) -> AsyncIterator[dict[str, Any]]:
        """The snapshot now, then again after every change, until cancelled."""
        seen = -1
        while True:
            async with self._changed:

                def moved(last: int = seen) -> bool:
                    return self._version != last

                await self._changed.wait_for(moved)
                seen = self._version
            yield self.snapshot()

    async def _publish(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    # ---- the driver's answers ---------------------------------------------------------

    async def answer(self, prompt_id: int, answer: str) -> None:
        """Take the driver's answer to the prompt on screen; raise AnswerError if it cannot be.

        The answer is committed with the prompt, then sent as intents: always a
        ``prompt_answered`` event; "accept" asks for renewal quotes, "already_renewed"
        asks the cloud to look again at the sources.
        """
        if answer not in reminders.ANSWERS:
            raise AnswerError("bad_answer", f"unknown answer {answer[:32]!r}")
        async with self._lock:
            shown = self._on_screen
            if shown is None or shown.n != prompt_id:
                raise AnswerError("stale_prompt", "that prompt is no longer on screen")
            if answer not in reminders.answers_for(shown.prompt.stage):
                raise AnswerError("bad_answer", f"{answer!r} is not offered by this prompt")
            store = self._need_store()
            day = self._today() or china_date(self._wall())
            await store.answer_prompt(shown.n, answer, day)
            self._history = await store.prompt_history()
            self._on_screen = None
        await self.agent.report_event("prompt_answered", detail=f"{shown.prompt.stage}:{answer}")
        if answer == "accept":
            await self.agent.request_renewal("quote")
        elif answer == "already_renewed":
            await self.agent.request_renewal("already_renewed")
        await self._publish()
        self.poke()

    # ---- the loops -----------------------------------------------------------------------

    def poke(self) -> None:
        """Something changed (a new state, a signal): decide again soon."""
        self._poke.set()

    async def run(self, store: Store) -> None:
        """Poll the bus and decide on every change, until cancelled."""
        self._store = store
        self._history = await store.prompt_history()
        self.signals.trip = await store.trip()
        async with asyncio.TaskGroup() as tg:
            if self.bus is not None:
                tg.create_task(self._poll(store), name=f"head-unit-{self.agent.vid}-bus")
            tg.create_task(self._decide_loop(), name=f"head-unit-{self.agent.vid}-decide")

    async def _decide_loop(self) -> None:
        while True:
            await self.evaluate()
            self._poke.clear()
            try:
                async with asyncio.timeout(EVALUATE_EVERY_S):
                    await self._poke.wait()
            except TimeoutError:
                pass

    async def _poll(self, store: Store) -> None:
        bus = self.bus
        assert bus is not None
        while True:
            try:
                reading = await bus.read()
            except Exception as exc:  # a bus fault is a silent car, never a dead agent
                log.warning("%s: vehicle bus read failed: %s", self.agent.vid, exc)
                reading = None
            if reading is not None:
                before = (self.signals.ignition_on, self.signals.moving, self.signals.speed_kmh)
                events = self.signals.feed(reading)
                if "ignition_on" in events:
                    self.signals.trip = await store.next_trip()
                    await self._check_vin(bus)
                for event in events:
                    await self._report(event)
                after = (self.signals.ignition_on, self.signals.moving, self.signals.speed_kmh)
                if events or after != before:
                    await self._publish()
                    self.poke()
            await asyncio.sleep(self.poll_s)

    async def _check_vin(self, bus: VehicleBus) -> None:
        """Read the VIN at ignition-on; report a mismatch with the policy once per trip."""
        try:
            vin = await bus.read_vin()
            self._vin_digest = None if vin is None else vin_digest(self.agent.vid, vin)
        except Exception as exc:  # unreadable (VinError, a bus fault): no claim either way
            log.warning("%s: VIN not read: %s", self.agent.vid, exc)
            self._vin_digest = None
        await self._report_mismatch()

    async def _report_mismatch(self) -> None:
        if not self.vin_mismatch or self._vin_digest is None:
            return
        key = (self.signals.trip, self._vin_digest)
        if self._mismatch_reported != key:
            self._mismatch_reported = key
            await self._report("vin_mismatch")

    async def _report(self, event: str, detail: str | None = None) -> None:
        try:
            await self.agent.report_event(event, detail)
        except AgentError as exc:  # recorded or not, the screen goes on
            log.warning("%s: cannot record %s: %s", self.agent.vid, event, exc)

    async def evaluate(self) -> reminders.Decision | None:
        """Decide now; show a prompt, hide a stale one, or raise a fleet alert. The screen
        is told whenever what it shows changed (a new state, a renewal update, a new day)."""
        async with self._lock:
            decision = await self._evaluate()
            shown = self._shown_key()
            if shown != self._shown:
                self._shown = shown
                await self._publish()
        if decision is not None:
            self.decisions = [*self.decisions[-63:], decision]
        return decision

    def _shown_key(self) -> tuple[object, ...]:
        """What the screen shows apart from the prompt and the signals (they publish
        themselves): the view (its time left out), the state's version, the renewal."""
        view = self.agent.status_view()
        state, renewal = self.agent.state, self.current_renewal()
        seen: tuple[object, ...] = (
            ("unverified", view.reason)
            if isinstance(view, display.Unverified)
            else (view.status, view.days_left, view.coverage_end, view.starts_at)
        )
        return (
            seen,
            None if state is None else state.version,
            None if renewal is None else (renewal.seq, renewal.stage),
            self.vin_mismatch,
            self.agent.connected,
        )

    async def _evaluate(self) -> reminders.Decision | None:
        view = self.agent.status_view()
        vehicle = self.signals.vehicle
        await self._report_mismatch()
        if self._on_screen is not None:
            if self._still_due(self._on_screen.prompt, view, vehicle):
                return None
            self._on_screen = None  # moving now, renewed, or no longer verified
            await self._publish()
        if self.vin_mismatch:
            return reminders.Quiet("vin_mismatch")
        decision = reminders.decide(view, vehicle, self._history, self.config)
        store = self._store
        if store is None:
            return decision
        if isinstance(decision, Prompt):
            day = self._today()
            assert day is not None  # a Prompt comes only from a verified view
            shown = Shown(decision.coverage_end, decision.stage, vehicle.trip, day)
            n = await store.add_prompt(shown, self._wall())  # before it is on screen
            self._history.append(shown)
            self._on_screen = OnScreen(n, decision)
            await self._publish()
            await self._report("prompt_shown", decision.stage)
        elif isinstance(decision, reminders.Alert):
            alert = Alerted(decision.coverage_end, decision.trip)
            if await store.add_alert(alert):
                self._history.append(alert)
                await self._report(decision.event)
        return decision

    def _still_due(
        self,
        prompt: Prompt,
        view: display.StatusView | display.Unverified,
        vehicle: reminders.Vehicle,
    ) -> bool:
        if vehicle.moving or not vehicle.ignition_on or self.vin_mismatch:
            return False
        if not isinstance(view, display.StatusView) or view.coverage_end != prompt.coverage_end:
            return False
        if view.record_status == "renewal_pending":
            return False
        if prompt.stage in reminders.PER_TRIP:  # uninsured: shown while it lasts
            return view.status == prompt.stage
        return view.status in ("expiring", "covered", "lapsed")

    def _today(self) -> date | None:
        view = self.agent.status_view()
        if isinstance(view, display.StatusView) and view.time.latest is not None:
            return china_date(view.time.latest)
        return None

    def _need_store(self) -> Store:
        if self._store is None:
            raise AnswerError("stale_prompt", "the head unit is not running")
        return self._store
