"""``ctpl-sim``: the demo, a fleet of simulated cars, and the benchmarks."""

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from cloud.pki import DevPki


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctpl-sim", description="CTPL simulator: the demo, simulated cars, benchmarks."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", help="broker + cloud + N simulated cars; Ctrl-C stops all")
    d.add_argument("--cars", type=int, default=20, help="how many cars (default 20)")
    d.add_argument("--workdir", type=Path, default=Path("var/demo"), help="default var/demo")
    d.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop by itself this long after every car is verified",
    )
    d.add_argument("-v", "--verbose", action="store_true", help="log every agent's steps")

    r = sub.add_parser("run", help="run the PKI's cars against a running broker and cloud")
    r.add_argument("--pki", type=Path, required=True, help="dev PKI directory (ctpl-cloud dev-pki)")
    r.add_argument("--broker-port", type=int, default=8883)
    r.add_argument("--cars", type=int, help="only the first N cars of the PKI")
    r.add_argument("--workdir", type=Path, default=Path("var/cars"), help="where car DBs go")
    r.add_argument("--status-interval", type=float, default=3600.0, metavar="SECONDS")

    b = sub.add_parser("bench", help="signed round trips/s through one cloud worker")
    b.add_argument("--out", type=Path, help="Markdown file to write the figures into")
    b.add_argument("--cars", type=int, default=200, help="concurrent cars (default 200)")
    b.add_argument("--seconds", type=float, default=10.0, help="measured time (default 10)")
    b.add_argument("--runs", type=int, default=3, help="loaded runs; the median is reported")

    f = sub.add_parser("footprint", help="one agent process: RSS, cold start, idle CPU")
    f.add_argument("--out", type=Path, help="Markdown file to write the figures into")
    f.add_argument("--starts", type=int, default=5, help="starts per page-cache state (default 5)")
    f.add_argument(
        "--idle",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="idle window after the first state (default 30)",
    )
    return p  # fmt: skip


async def _run_cars(a: argparse.Namespace) -> int:
    from .cars import SimulatedFleet, car_config

    pki = DevPki(a.pki)
    vids = pki.vids()[: a.cars]
    fleet = SimulatedFleet(
        [car_config(pki, v, a.workdir, a.broker_port, a.status_interval) for v in vids]
    )
    await fleet.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ctpl-sim``; returns the exit code."""
    a = _parser().parse_args(argv)
    level = logging.INFO if getattr(a, "verbose", False) or a.command == "run" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(a, "cars", 1) is not None and getattr(a, "cars", 1) < 1:
        print("ctpl-sim: --cars must be at least 1", file=sys.stderr)
        return 2
    try:
        if a.command == "demo":
            from .demo import run_demo

            return asyncio.run(run_demo(a.workdir, a.cars, a.duration))
        if a.command == "run":
            return asyncio.run(_run_cars(a))
        if a.command == "footprint":
            if a.starts < 1 or a.idle <= 0:
                print("ctpl-sim: --starts must be at least 1, --idle positive", file=sys.stderr)
                return 2
            from .footprint import main as footprint_main

            return footprint_main(a.out, a.starts, a.idle)
        from .bench import main as bench_main

        return bench_main(a.out, a.cars, a.seconds, a.runs)
    except KeyboardInterrupt:
        return 130
