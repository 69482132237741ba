"""``ctpl-agent``: run the in-vehicle agent, or show the stored policy state after re-verifying it.

Exit codes: 0 success (a verified state shown, or a clean stop), 1 nothing verified
to show or the agent failed, 2 usage or configuration errors.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

from . import display, inbox
from .config import load_config
from .errors import AgentError, ConfigError, StoreError
from .keyring import load_pinned_keys
from .protocol import topics
from .protocol.clock import SystemClock
from .protocol.errors import TopicError
from .protocol.keys import PublicKey
from .protocol.messages import PolicyState
from .runner import Agent
from .store import Store

EXIT_OK: Final = 0
EXIT_UNVERIFIED: Final = 1
EXIT_USAGE: Final = 2
STORE_TIMEOUT_S: Final = 30.0


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("needs a UTC offset, e.g. 2025-06-01T12:00:00+08:00")
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
        description="Re-verify the stored record's signature, then show it; print "
        "'status unverified' (exit 1) if nothing verified and fresh is stored.",
    )
    status.add_argument("--db", type=Path, required=True, help="the agent's SQLite file")
    status.add_argument(
        "--cloud-key",
        type=Path,
        action="append",
        required=True,
        help="a pinned cloud message-signing public key (PEM); repeat for several",
    )
    status.add_argument("--vid", help="refuse a record for any other vehicle id")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--now", type=_aware, help="the instant to judge at (ISO 8601 with offset)")
    return parser


async def _stored_state(db: Path, keys: dict[str, PublicKey], vid: str | None) -> PolicyState | str:
    async with asyncio.timeout(STORE_TIMEOUT_S), Store(db) as store:
        record = await store.policy()
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


def _status(args: argparse.Namespace) -> int:
    keys = load_pinned_keys(args.cloud_key)
    now = args.now or SystemClock().now()
    if not args.db.is_file():
        found: PolicyState | str = f"no store at {args.db}"
    else:
        try:
            found = asyncio.run(_stored_state(args.db, keys, args.vid))
        except (StoreError, TimeoutError) as exc:
            found = f"store unreadable: {exc or 'timed out'}"
    if isinstance(found, str):
        shown = display.view(None, now, missing=found)
    else:
        shown = display.view(found, now)
    print(json.dumps(display.as_json(shown)) if args.json else display.as_text(shown))
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


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ctpl-agent``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _status(args) if args.command == "status" else _run(args)
    except ConfigError as exc:
        print(f"ctpl-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
