"""``ctpl-agent``: enroll, renew the certificate, run the agent, or show the verified state.

Exit codes: 0 success (enrolled, renewed or not due, a verified state shown, a clean
stop), 1 nothing verified to show, enrollment or renewal failed, or the agent failed;
2 usage or configuration errors.
"""

import argparse
import asyncio
import json
import logging
import math
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from . import display, inbox, provisioning
from .boot import current_boot_id
from .config import load_config
from .errors import AgentError, ConfigError, EnrollmentError, StoreError
from .keyring import load_pinned_keys, load_trusted_keys
from .protocol import topics
from .protocol.clock import SystemClock
from .protocol.errors import TopicError
from .protocol.keys import PublicKey
from .protocol.messages import PolicyState
from .runner import Agent
from .store import PolicyRecord, Store
from .trusted_time import Anchor, TrustedClock, TrustedNow

EXIT_OK: Final = 0
EXIT_UNVERIFIED: Final = 1
EXIT_USAGE: Final = 2
STORE_TIMEOUT_S: Final = 30.0
# Trusted time is judged in China time and by whole days; an instant this close to the
# edge of what datetime holds would overflow there, so none such is ever judged.
_EDGE: Final = timedelta(days=2)
_FIRST: Final = datetime.min.replace(tzinfo=UTC) + _EDGE
_LAST: Final = datetime.max.replace(tzinfo=UTC) - _EDGE


def _aware(text: str) -> datetime:
    # ArgumentTypeError, not ValueError: argparse prints its message instead of hiding it.
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {text!r}") from None
    if value.utcoffset() is None:
        raise argparse.ArgumentTypeError("needs a UTC offset, e.g. 2025-06-01T12:00:00+08:00")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctpl-agent",
        description="In-vehicle CTPL policy agent: keeps a cloud-signed copy of the car's "
        "policy state in sync over MQTT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="connect to the broker and keep the policy state in sync",
        description="Run the agent until SIGINT/SIGTERM. Flags override the config file.",
    )
    run.add_argument("--config", type=Path, help="TOML (.toml) or JSON config file")
    run.add_argument("--vid", help="this car's vehicle id (the CN of its certificate)")
    run.add_argument("--key", dest="key_file", type=Path, help="the car's private key (PEM)")
    run.add_argument("--cert", dest="cert_file", type=Path, help="the car's certificate (PEM)")
    run.add_argument("--ca", dest="ca_file", type=Path, help="the device CA certificate (PEM)")
    run.add_argument(
        "--cloud-key",
        dest="cloud_keys",
        type=Path,
        action="append",
        help="a pinned cloud message-signing public key (PEM); repeat for several",
    )
    run.add_argument("--broker-host", help="broker host name or address")
    run.add_argument("--broker-port", type=int, help="broker TLS port (default 8883)")
    run.add_argument("--db", dest="db_path", type=Path, help="the agent's SQLite file")
    run.add_argument(
        "--status-interval", dest="status_interval_s", type=float, help="seconds between requests"
    )
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")

    status = sub.add_parser(
        "status",
        help="show the stored policy state, only if it verifies with a pinned cloud key",
        description="Re-verify the stored record's signature, then judge it in trusted time; "
        "print 'status unverified' (exit 1) if nothing verified and fresh is stored. "
        "Trusted time comes from the agent's last anchor (a cloud-signed issued_at and the "
        "boot-time clock) when it was saved in this same boot; after a reboot only the "
        "persisted floor is left (confidence 'carried'), which never proves a record "
        "fresh, so it says 'status unverified' until the agent hears from the cloud. "
        "Give --config (store, vid and pinned keys, key set included), or --db and --cloud-key.",
    )
    status.add_argument("--config", type=Path, help="the agent's config file")
    status.add_argument("--db", type=Path, help="the agent's SQLite file")
    status.add_argument(
        "--cloud-key",
        type=Path,
        action="append",
        help="a pinned cloud message-signing public key (PEM); repeat for several",
    )
    status.add_argument("--vid", help="refuse a record for any other vehicle id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--now",
        type=_aware,
        help="judge at this instant, stated by you (ISO 8601 with offset; confidence 'given')",
    )
    _add_enroll(sub)
    renew = sub.add_parser(
        "renew",
        help="renew the car's certificate with a new key when a third of its life is left",
        description="Sign a CSR for a new key with the current one, send it to the cloud, "
        "verify the answer and swap key and certificate atomically.",
    )
    renew.add_argument("--config", type=Path, required=True, help="the agent's config file")
    renew.add_argument("--force", action="store_true", help="renew even if not due yet")
    return parser


def _add_enroll(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    enroll = sub.add_parser(
        "enroll",
        help="enroll this gateway with a one-time claim token (zero-touch)",
        description="Make a P-256 key, send a CSR with the claim token over HTTPS, verify "
        "the answer, and install the identity directory (key, certificate, CA, key set, "
        "agent.toml for 'run --config') whole or not at all.",
    )
    enroll.add_argument("--cloud", required=True, help="the cloud's API, https://host[:port]")
    enroll.add_argument("--claim", required=True, help="the one-time claim token")
    enroll.add_argument("--vin", help="the vehicle's VIN (stored by the cloud, never shown)")
    enroll.add_argument("--fleet", dest="fleet_id", help="the fleet the claim belongs to")
    enroll.add_argument("--dir", type=Path, required=True, help="the identity directory to make")
    enroll.add_argument(
        "--root-key", type=Path, required=True, help="the pinned root public key (PEM)"
    )
    enroll.add_argument("--ca", type=Path, help="CA bundle for the API (default: system trust)")
    enroll.add_argument("--force", action="store_true", help="replace an existing identity")
    enroll.add_argument(
        "--timeout",
        type=float,
        default=provisioning.ENROLL_TIMEOUT_S,
        help="seconds to wait for the cloud (default %(default)s)",
    )


@dataclass(frozen=True, slots=True)
class _TimeRows:
    """The persisted floor and saved anchor; ``fault`` says why a row was left out."""

    floor: datetime | None = None
    anchor: tuple[str, Anchor] | None = None
    fault: str | None = None


async def _stored(
    db: Path, keys: dict[str, PublicKey], vid: str | None
) -> tuple[PolicyState | str, _TimeRows, int]:
    """The stored state (or why none can be shown), the trusted-time rows, and how many
    intents still wait for the cloud's receipt."""
    async with asyncio.timeout(STORE_TIMEOUT_S), Store(db) as store:
        try:
            record = await store.policy()
        except (ValueError, OverflowError) as exc:
            # The unsigned dates kept beside the envelope do not parse: a damaged row.
            found: PolicyState | str = f"stored record is unreadable ({exc})"
        else:
            found = _stored_state(record, keys, vid)
        rows = await _time_rows(store)
        pending, _ = await store.outbox_counts()
    return found, rows, pending


async def _time_rows(store: Store) -> _TimeRows:
    """The time rows as the store parses them; one it cannot parse is a fault, not a raise."""
    # A corrupt floor also drops the anchor: the floor is what voids an anchor's upper
    # bound after missed time, so an anchor checked against no floor could claim too much.
    try:
        floor = await store.trusted_floor()
    except (ValueError, OverflowError) as exc:
        return _TimeRows(fault=f"the stored floor is unreadable ({exc})")
    try:
        anchor = await store.anchor()
    except (ValueError, OverflowError) as exc:
        return _TimeRows(floor, fault=f"the saved anchor is unreadable ({exc})")
    return _TimeRows(floor, anchor)


def _stored_state(
    record: PolicyRecord | None, keys: dict[str, PublicKey], vid: str | None
) -> PolicyState | str:
    if record is None:
        return "no policy state is stored"
    try:
        topic_vid = topics.parse(record.topic).vid
    except TopicError as exc:
        return f"stored topic is malformed: {exc}"
    if vid is not None and topic_vid != vid:
        return f"stored record is for {topic_vid}, not {vid}"
    outcome = inbox.read(topic_vid, keys, record.topic, record.envelope)
    if isinstance(outcome, inbox.Dropped):
        return f"stored record does not verify: {outcome.reason}: {outcome.detail}"
    if not isinstance(outcome.body, PolicyState):
        return "stored record is not a policy state"
    return outcome.body


def _trusted(
    given: datetime | None,
    found: PolicyState | str,
    rows: _TimeRows,
    boot_id: str | None,
    mono: float,
) -> tuple[TrustedNow | None, str | None]:
    """Trusted time, and why part of it had to be left out (None when nothing was); never raises.

    ``--now`` as given; else the agent's anchor if saved in this very boot; else the floor.
    Monotonic readings compare only within one boot, so an anchor saved under another
    boot id is ignored (no fault: that is every reboot) and only the floor (confidence
    "carried") is left.
    """
    if given is not None:
        now = TrustedNow.given(given)
        return now, _outside("--now", now)
    floors = (rows.floor, found.issued_at if isinstance(found, PolicyState) else None)
    fault, anchor = rows.fault, rows.anchor
    if fault is None and anchor is not None and anchor[0] == boot_id:
        anchored = _anchored(anchor[1], floors, mono)
        if isinstance(anchored, TrustedNow):
            return anchored, None
        fault = anchored
    # An anchor that fails any check is dropped whole, issued_at included: the row is the
    # agent's own unsigned bookkeeping, and once part of it is wrong none of it is
    # evidence. The floor needs no monotonic reading and only ever lowers what may be
    # shown (carried time never proves a record fresh), so falling back on it is safe.
    clock = TrustedClock()
    for at in floors:
        if at is not None:
            clock.raise_floor(at)
    carried = clock.now(mono)
    return carried, fault or _outside("the trusted floor", carried)


def _anchored(held: Anchor, floors: tuple[datetime | None, ...], mono: float) -> TrustedNow | str:
    """Fresh trusted time from an anchor saved in this boot, or why it cannot be used."""
    if not all(math.isfinite(x) for x in (held.sent, held.received, mono)):
        return (
            f"the saved anchor or the monotonic clock is not a finite reading (sent "
            f"{held.sent}, received {held.received}, monotonic {mono}); anchor ignored"
        )
    if mono < held.received:
        # Same boot id yet an earlier reading: the clock restarted under an unchanged
        # boot id, or the row is not what the agent wrote.
        return (
            f"the monotonic clock reads before the saved anchor ({mono} < {held.received}); "
            "anchor ignored"
        )
    clock = TrustedClock()
    try:
        clock.anchor(held.issued_at, held.sent, held.received)
        for at in floors:
            if at is not None:
                clock.raise_floor(at)
        now = clock.now(mono)
    except (ValueError, OverflowError) as exc:
        return f"the saved anchor cannot be used ({exc}); anchor ignored"
    if now is None or now.latest is None:
        return (
            "the trusted floor is past the saved anchor's upper bound (the monotonic clock "
            "missed time); anchor ignored"
        )
    return _outside("the saved anchor", now) or now


def _outside(source: str, now: TrustedNow | None) -> str | None:
    """Why ``now`` (from ``source``) cannot be judged in, or None when it can."""
    if now is None:
        return None
    for at in (now.earliest, now.latest):
        if at is None:
            continue
        if at.utcoffset() is None:
            return f"{source} {at.isoformat()} has no UTC offset"
        if not _FIRST <= at <= _LAST:
            return f"{source} gives {at.isoformat()}, outside the range time can be judged in"
    return None


def _judged(
    found: PolicyState | str, trusted: TrustedNow | None, fault: str | None
) -> display.StatusView | display.Unverified:
    """What ``status`` shows; a trusted-time fault always makes it unverified."""
    if isinstance(found, str):
        return display.view(None, trusted, missing=found)
    if fault is not None:
        return display.Unverified(f"trusted time unavailable: {fault}", trusted)
    return display.view(found, trusted)


def _status(args: argparse.Namespace) -> int:
    # The wall clock only picks usable key set keys here; it never decides what is shown.
    now = args.now or SystemClock().now()
    if args.config is None:
        keys = load_pinned_keys(args.cloud_key)
    else:
        config = load_config(args.config)
        pinned = (*config.cloud_keys, *(args.cloud_key or ()))
        keys = load_trusted_keys(pinned, config.keyset_file, config.root_key, now)
        args.db = args.db or config.db_path
        args.vid = args.vid or config.vid
    rows, pending = _TimeRows(), 0
    if not args.db.is_file():
        found: PolicyState | str = f"no store at {args.db}"
    else:
        try:
            found, rows, pending = asyncio.run(_stored(args.db, keys, args.vid))
        except (StoreError, TimeoutError) as exc:
            found = f"store unreadable: {exc or 'timed out'}"
    trusted, fault = _trusted(args.now, found, rows, current_boot_id(), SystemClock().monotonic())
    shown = _judged(found, trusted, fault)
    if args.json:
        print(json.dumps({**display.as_json(shown), "intents_pending": pending}))
    else:
        print(display.as_text(shown))
        if pending:
            print(f"outbox: {pending} intent(s) waiting for the cloud's receipt")
    return EXIT_UNVERIFIED if isinstance(shown, display.Unverified) else EXIT_OK


async def _run_until_signalled(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    names = ("vid", "key_file", "cert_file", "ca_file", "cloud_keys", "broker_host")
    overrides = {name: getattr(args, name) for name in names}
    overrides |= {n: getattr(args, n) for n in ("broker_port", "db_path", "status_interval_s")}
    if overrides["cloud_keys"] is not None:
        overrides["cloud_keys"] = tuple(overrides["cloud_keys"])
    agent = Agent(load_config(args.config, overrides))
    try:
        asyncio.run(_run_until_signalled(agent))
    except (AgentError, ExceptionGroup) as exc:
        cause = _leaf(exc)
        if not isinstance(cause, AgentError):
            raise
        print(f"ctpl-agent: {cause}", file=sys.stderr)
        return EXIT_USAGE if isinstance(cause, ConfigError) else EXIT_UNVERIFIED
    return EXIT_OK


def _enroll(args: argparse.Namespace) -> int:
    try:
        found = asyncio.run(
            provisioning.enroll(
                args.cloud,
                args.claim,
                args.dir,
                args.root_key,
                vin=args.vin,
                fleet_id=args.fleet_id,
                api_ca_file=args.ca,
                force=args.force,
                timeout_s=args.timeout,
            )
        )
    except EnrollmentError as exc:
        print(f"ctpl-agent: enrollment failed: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIED
    print(f"enrolled as {found.vid}; certificate valid until {found.not_after.isoformat()}")
    print(f"run it with: ctpl-agent run --config {args.dir / 'agent.toml'}")
    return EXIT_OK


async def _renew_now(args: argparse.Namespace) -> provisioning.Renewed | provisioning.NotDue:
    config = load_config(args.config)
    async with Store(config.db_path) as store:
        return await provisioning.renew(config, store, SystemClock().now(), force=args.force)


def _renew(args: argparse.Namespace) -> int:
    try:
        outcome = asyncio.run(_renew_now(args))
    except (EnrollmentError, StoreError) as exc:
        print(f"ctpl-agent: renewal failed: {exc}", file=sys.stderr)
        return EXIT_UNVERIFIED
    until = outcome.not_after.isoformat()
    if isinstance(outcome, provisioning.NotDue):
        print(f"not due: certificate valid until {until} (--force renews anyway)")
    else:
        print(f"renewed: new key and certificate valid until {until}")
    return EXIT_OK


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ctpl-agent``; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "status" and args.config is None and not (args.db and args.cloud_key):
        parser.error("status needs --config, or --db and --cloud-key")
    commands = {"status": _status, "run": _run, "enroll": _enroll, "renew": _renew}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"ctpl-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
