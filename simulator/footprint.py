"""``ctpl-sim footprint``: one agent process's memory, cold start and idle CPU.

The agent runs as a gateway runs it, ``python -m agent run --config agent.toml``, its own
process, against a real Mosquitto started from ``broker-config/`` and a real cloud worker
process (``python -m cloud serve``). Each start uses a car of its own, never seen by the
cloud and with no store yet, so the first verified state needs the full round trip (no
retained state to pick up, no stored one to re-verify).

"First verified state" is read from the agent's SQLite store, polled read-only: the agent
writes ``policy_state`` only after the envelope verified against a pinned key and the
state passed the rollback check, and commits (``synchronous=FULL``) before it logs
"accepted". The store is what survives a power cut, so that is the moment that counts;
the stored envelope is verified once more here afterwards. Figures come from
``/proc/<pid>/status`` (VmRSS, VmHWM) and ``/proc/<pid>/stat`` (utime + stime).
"""

import asyncio
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from agent.config import dumps_toml
from agent.protocol.keys import kid_for, load_public_key
from cloud.pki import DevPki

from .bench import _cpu_s, _pin, _write_section

RSS_TARGET_MIB: Final = 45.0
FIRST_STATE_TARGET_S: Final = 1.5
IDLE_CPU_TARGET_PCT: Final = 1.0
POLL_S: Final = 0.005
START_TIMEOUT_S: Final = 30.0
STATE_QUERY: Final = "SELECT topic, envelope FROM policy_state WHERE id = 1"
"""The agent store's verified state (agent/store.py writes the row only once verified)."""
IMPORT_LADDER: Final = (
    ("Python, nothing imported", ""),
    ("+ asyncio, ssl, sqlite3, logging", "import asyncio, ssl, sqlite3, logging"),
    ("+ cryptography (x509, EC)", "from cryptography import x509; from cryptography.hazmat.primitives.asymmetric import ec"),  # noqa: E501
    ("+ agent.protocol (message records)", "import agent.protocol.messages, agent.protocol.envelope"),  # noqa: E501
    ("+ paho-mqtt, aiomqtt", "import aiomqtt"),
    ("+ aiosqlite", "import aiosqlite"),
    ("+ agent.runner (the rest of the agent)", "import agent.runner"),
    ("+ agent.cli (what `ctpl-agent run` loads)", "import agent.cli"),
)  # fmt: skip


def _status_kib(pid: int | str) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM", "RssAnon", "RssFile"}:
            out[key] = int(value.split()[0])
    return out


def _rss_by_mapping(pid: int, top: int = 8) -> list[tuple[str, int]]:
    """The ``top`` largest resident mappings of ``pid`` (KiB), by file name or ``[anon]``."""
    rss: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and not head[0].endswith(":"):
            path = head[5] if len(head) > 5 else "[anon]"
            name = Path(path).name if path.startswith("/") else path
        elif head and head[0] == "Rss:":
            rss[name] = rss.get(name, 0) + int(head[1])
    return sorted(rss.items(), key=lambda kv: -kv[1])[:top]


def _mib(kib: float) -> float:
    return kib / 1024


@dataclass
class Start:
    """One agent process from spawn to its first verified state (and, if asked, idle)."""

    first_state_s: float
    at_state: dict[str, int]
    """/proc status figures (KiB) right after the first verified state."""
    after_idle: dict[str, int] = field(default_factory=dict)
    idle_s: float = 0.0
    idle_cpu_s: float = 0.0
    startup_cpu_s: float = 0.0
    """CPU seconds the agent used from spawn to its first verified state."""
    mappings: list[tuple[str, int]] = field(default_factory=list)
    """The largest resident mappings (KiB) after the idle window."""

    @property
    def idle_cpu_pct(self) -> float:
        return 100 * self.idle_cpu_s / self.idle_s if self.idle_s else 0.0


@dataclass
class Footprint:
    cold: list[Start]
    warm: list[Start]
    steady: Start
    ladder: list[tuple[str, float]]
    """Import ladder: cumulative RSS (MiB) of a fresh interpreter after each step."""
    cache_note: str

    @staticmethod
    def median(values: list[float]) -> float:
        ordered = sorted(values)
        n = len(ordered)
        return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def import_ladder() -> list[tuple[str, float]]:
    """RSS (MiB) of a fresh interpreter after each cumulative step of the agent's imports."""
    code = "import json, sys\nrss = []\n"
    for _, stmt in IMPORT_LADDER:
        code += (
            f"{stmt}\n"
            "rss.append(int(next(l for l in open('/proc/self/status')"
            " if l.startswith('VmRSS')).split()[1]))\n"
        )
    code += "print(json.dumps(rss))\n"
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    values = json.loads(out.stdout)
    return [(label, _mib(v)) for (label, _), v in zip(IMPORT_LADDER, values, strict=True)]


def _agent_files() -> list[Path]:
    """Files a fresh ``python -m agent run`` reads to start: modules, byte code, libraries."""
    code = (
        "import json, sys, agent.cli, agent.runner\n"
        "files = set()\n"
        "for m in list(sys.modules.values()):\n"
        "    for a in ('__file__', '__cached__'):\n"
        "        f = getattr(m, a, None)\n"
        "        if isinstance(f, str): files.add(f)\n"
        "for line in open('/proc/self/maps'):\n"
        "    p = line.split(maxsplit=5)[5:]\n"
        "    if p and p[0].startswith('/'): files.add(p[0].strip())\n"
        "print(json.dumps(sorted(files)))\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    return [Path(p) for p in json.loads(out.stdout)]


def evict_from_page_cache(files: list[Path]) -> int:
    """Ask the kernel to drop ``files``' cached pages (no privilege needed); return how many.

    Pages mapped by a live process (this one maps libpython, OpenSSL and cryptography's
    Rust extension too) stay; every ``.py``/``.pyc`` and unmapped library is read again.
    """
    done = 0
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return done


def write_agent_config(pki: DevPki, vid: str, workdir: Path, broker_port: int) -> Path:
    """An ``agent.toml`` for car ``vid`` as a gateway holds it; return its path."""
    from .cars import car_config  # imports the agent's runner: only the harness needs it

    config = car_config(pki, vid, workdir, broker_port)
    path = workdir / vid / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps_toml(dataclasses.asdict(config)))
    return path


def _stored_state(db: Path) -> tuple[str, bytes] | None:
    """The stored (topic, envelope), read-only; None while there is none (or no store yet)."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            row = conn.execute(STATE_QUERY).fetchone()
    except sqlite3.Error:
        return None  # not created yet, or a write in progress
    return None if row is None else (str(row[0]), bytes(row[1]))


def _check_verified(pki: DevPki, vid: str, record: tuple[str, bytes]) -> None:
    """Verify the stored envelope here too; raise if it is not a policy state for ``vid``."""
    from agent import inbox
    from agent.protocol.messages import PolicyState

    pub = load_public_key(pki.signing_pub.read_bytes())
    outcome = inbox.read(vid, {kid_for(pub): pub}, record[0], record[1])
    if not isinstance(outcome, inbox.Verified) or not isinstance(outcome.body, PolicyState):
        raise RuntimeError(f"{vid}: the stored record does not verify: {outcome}")


def measure_start(
    pki: DevPki, vid: str, workdir: Path, broker_port: int, idle_s: float = 0.0, cpu: int = 0
) -> Start:
    """Spawn one agent, wait for its first verified state, optionally stay ``idle_s``; stop it."""
    config = write_agent_config(pki, vid, workdir, broker_port)
    db = workdir / vid / "agent.db"
    log_path = workdir / vid / "agent.log"
    with log_path.open("wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        _pin(proc.pid, cpu)
        while (record := _stored_state(db)) is None:
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}: {log_path.read_text()}")
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"no verified state in {START_TIMEOUT_S} s: {log_path}")
            time.sleep(POLL_S)
        first_s = time.perf_counter() - t0
        startup_cpu = _cpu_s(proc.pid)
        at_state = _status_kib(proc.pid)
        _check_verified(pki, vid, record)
        start = Start(first_s, at_state, startup_cpu_s=startup_cpu)
        if idle_s > 0:
            cpu0, i0 = _cpu_s(proc.pid), time.perf_counter()
            time.sleep(idle_s)
            start.idle_cpu_s = _cpu_s(proc.pid) - cpu0
            start.idle_s = time.perf_counter() - i0
            start.after_idle = _status_kib(proc.pid)
            start.mappings = _rss_by_mapping(proc.pid)
        return start
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_for_worker(proc: "subprocess.Popen[bytes]", log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while b"connected to" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the cloud worker did not come up: {log.read_text()[-2000:]}")
        time.sleep(0.05)


def run(workdir: Path, starts: int, idle_s: float) -> Footprint:
    """Broker, cloud worker, then ``starts`` cold-cache and ``starts`` warm-cache agent starts."""
    from cloud.fleet_file import import_files
    from cloud.pki import write_dev_pki
    from cloud.store import Store

    from .broker import Mosquitto
    from .fleet import synthetic_policies

    cars = 2 * starts + 1
    pki = write_dev_pki(workdir / "pki", cars)
    vids = pki.vids()
    db = workdir / "cloud.db"
    policies = workdir / "policies.json"
    policies.write_text(json.dumps(synthetic_policies(vids, datetime.now(UTC))))

    async def seed() -> None:
        async with await Store.open(db) as store:
            await import_files(store, pki.vehicles_file, policies)

    asyncio.run(seed())
    files = _agent_files()
    with Mosquitto(pki, workdir / "broker") as broker:
        _pin(broker.proc.pid, 1) if broker.proc else None
        _pin(0, 1)
        worker_log = workdir / "worker.log"
        with worker_log.open("wb") as wlog:
            worker = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "cloud", "serve", "--pki", str(pki.root), "--db", str(db),
                 "--broker-port", str(broker.port)],
                stdout=subprocess.DEVNULL, stderr=wlog, start_new_session=True,
            )  # fmt: skip
        try:
            _pin(worker.pid, 1)
            _wait_for_worker(worker, worker_log)
            cold, warm = [], []
            evicted = 0
            for i in range(starts):
                evicted = evict_from_page_cache(files)
                cold.append(measure_start(pki, vids[i], workdir / "cars", broker.port))
                print(f"  cold cache start {i + 1}/{starts}: {cold[-1].first_state_s:.3f} s")
            for i in range(starts):
                warm.append(measure_start(pki, vids[starts + i], workdir / "cars", broker.port))
                print(f"  warm cache start {i + 1}/{starts}: {warm[-1].first_state_s:.3f} s")
            print(f"  one more start, then {idle_s:.0f} s idle ...")
            steady = measure_start(pki, vids[-1], workdir / "cars", broker.port, idle_s)
        finally:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
    note = (
        f"before each cold-cache start the {evicted} files a fresh agent reads (its `.py` and "
        "`.pyc` files, extension modules, shared libraries) were dropped from the page cache "
        "with `posix_fadvise(DONTNEED)`; pages the harness itself maps (libpython, OpenSSL, "
        "cryptography's Rust extension) stay cached"
    )
    return Footprint(cold, warm, steady, import_ladder(), note)


_HOW: Final = (
    "How: a real Mosquitto from `broker-config/` (mTLS, the shipped ACL) and a real cloud "
    "worker process (`python -m cloud serve`, its store seeded with the dev PKI's cars and "
    "a policy for every car but each tenth, which the cloud answers `unknown`) run pinned "
    "to CPU 1; each agent is its own process, started as a gateway starts it, "
    "`python -m agent run --config agent.toml` (default settings: INFO logging, status "
    "interval 1 h, keep-alive 60 s), pinned to CPU 0. Every start uses a car the cloud has "
    "never answered and an empty store, so the first state needs the full signed round "
    'trip (TLS handshake, subscribe, `status.request`, verify, store). "First verified '
    "state\" is when the agent's SQLite store holds the `policy_state` row, polled "
    "read-only every {poll_ms:.0f} ms: the agent writes it only after the signature "
    "verified against the pinned key and the rollback check passed, and commits it "
    '(`synchronous=FULL`) before it logs "accepted"; the harness verifies the stored '
    "envelope once more afterwards. Cold cache: {cache_note}. Memory from "
    "`/proc/<pid>/status`, CPU from `/proc/<pid>/stat` (utime + stime); the idle window "
    "follows the first state in the last start."
)


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def report(fp: Footprint, command: str) -> str:
    """The Markdown section for docs/benchmarks.md."""
    med = Footprint.median
    cold_s = med([s.first_state_s for s in fp.cold])
    warm_s = med([s.first_state_s for s in fp.warm])
    st = fp.steady
    rss_state = _mib(st.at_state["VmRSS"])
    rss_idle = _mib(st.after_idle["VmRSS"])
    hwm = _mib(st.after_idle["VmHWM"])
    rss_max = max(rss_state, rss_idle, hwm)
    worst_s = max(cold_s, warm_s)
    cold_all = ", ".join(f"{s.first_state_s:.2f}" for s in fp.cold)
    warm_all = ", ".join(f"{s.first_state_s:.2f}" for s in fp.warm)
    cold_cpu = med([s.startup_cpu_s for s in fp.cold])
    warm_cpu = med([s.startup_cpu_s for s in fp.warm])
    import_rss = import_only_rss(fp)
    ladder = "\n".join(
        f"| {label} | {rss:.1f} | {rss - (fp.ladder[i - 1][1] if i else 0):+.1f} |"
        for i, (label, rss) in enumerate(fp.ladder)
    )
    mappings = "\n".join(f"| `{name}` | {_mib(kib):.1f} |" for name, kib in st.mappings)
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    how = textwrap.fill(
        _HOW.format(poll_ms=POLL_S * 1000, cache_note=fp.cache_note),
        88,
        break_on_hyphens=False,
        break_long_words=False,
    )
    anon, file_ = _mib(st.after_idle["RssAnon"]), _mib(st.after_idle["RssFile"])
    return f"""## Agent footprint

Measured {datetime.now(UTC):%Y-%m-%d} with `{command}` on this machine
({os.cpu_count()} cores, Python {sys.version.split()[0]}, {_machine()}).

| figure | value | target | |
|---|---|---|---|
| cold start to first verified state, cold page cache (median of {len(fp.cold)}) | **{cold_s:.2f} s** | ≤ {FIRST_STATE_TARGET_S} s | {_verdict(cold_s <= FIRST_STATE_TARGET_S)} |
| the same, warm page cache (median of {len(fp.warm)}) | **{warm_s:.2f} s** | ≤ {FIRST_STATE_TARGET_S} s | {_verdict(warm_s <= FIRST_STATE_TARGET_S)} |
| all starts, cold cache / warm cache, s | {cold_all} / {warm_all} | | |
| agent CPU from spawn to first state, cold / warm (median) | {cold_cpu:.2f} / {warm_cpu:.2f} s | | |
| VmRSS at the first verified state | **{rss_state:.1f} MiB** | ≤ {RSS_TARGET_MIB:.0f} MB | {_verdict(rss_state <= RSS_TARGET_MIB)} |
| VmRSS after {st.idle_s:.0f} s idle (anon {anon:.1f} + file {file_:.1f}) | **{rss_idle:.1f} MiB** | ≤ {RSS_TARGET_MIB:.0f} MB | {_verdict(rss_idle <= RSS_TARGET_MIB)} |
| VmHWM (peak RSS) after {st.idle_s:.0f} s idle | {hwm:.1f} MiB | ≤ {RSS_TARGET_MIB:.0f} MB | {_verdict(hwm <= RSS_TARGET_MIB)} |
| idle CPU over {st.idle_s:.0f} s after the first state | **{st.idle_cpu_pct:.2f} % of a core** ({st.idle_cpu_s * 1000:.0f} ms; ticks of {tick_ms:.0f} ms) | < {IDLE_CPU_TARGET_PCT:.0f} % | {_verdict(st.idle_cpu_pct < IDLE_CPU_TARGET_PCT)} |
| import only (`python -c 'import agent.runner'`), VmRSS | {import_rss:.1f} MiB | | |

Verdict: first verified state {_verdict(worst_s <= FIRST_STATE_TARGET_S)}, \
resident memory {_verdict(rss_max <= RSS_TARGET_MIB)}, \
idle CPU {_verdict(st.idle_cpu_pct < IDLE_CPU_TARGET_PCT)}.
Memory is judged at its worst figure ({rss_max:.1f} MiB) against 45 MiB, the lenient
reading of "45 MB" (45 × 10⁶ bytes is {45e6 / 2**20:.1f} MiB).

{how}

Where the resident memory sits after the idle window (largest mappings; file-backed
pages of shared libraries count in RSS too):

| mapping | RSS, MiB |
|---|---|
{mappings}

Where the import-time memory goes (a fresh interpreter, each step adding to the one
before; shared dependencies count where first imported):

| step | VmRSS, MiB | step adds, MiB |
|---|---|---|
{ladder}

The `+ agent.runner` step is the import-only figure above ({import_rss:.1f} MiB, every step
before it is a subset of what `agent.runner` imports): the agent's resident memory before it
has opened a socket or a store.
"""  # noqa: E501


def import_only_rss(fp: Footprint) -> float:
    """VmRSS (MiB) of a fresh interpreter that imported ``agent.runner`` and nothing else."""
    return next(rss for label, rss in fp.ladder if "agent.runner" in label)


def _machine() -> str:
    u = os.uname()
    mem = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal")),
        "0",
    )  # fmt: skip
    return f"{u.machine}, Linux {u.release.split('-')[0]}, {int(mem) / 1024**2:.1f} GiB RAM"


def main(out: Path | None, starts: int = 5, idle_s: float = 30.0) -> int:
    """Run the footprint benchmark and write (or print) its section."""
    command = "ctpl-sim footprint" + (f" --out {out}" if out else "")
    with tempfile.TemporaryDirectory(prefix="ctpl-footprint-") as tmp:
        fp = run(Path(tmp), starts, idle_s)
    text = report(fp, command)
    st = fp.steady
    print(
        f"first verified state, median: cold cache "
        f"{Footprint.median([s.first_state_s for s in fp.cold]):.3f} s, warm cache "
        f"{Footprint.median([s.first_state_s for s in fp.warm]):.3f} s; "
        f"VmRSS {_mib(st.at_state['VmRSS']):.1f} MiB at first state, "
        f"{_mib(st.after_idle['VmRSS']):.1f} MiB after {st.idle_s:.0f} s idle "
        f"(VmHWM {_mib(st.after_idle['VmHWM']):.1f}); idle CPU {st.idle_cpu_pct:.2f} % of a core; "
        f"import only {import_only_rss(fp):.1f} MiB"
    )
    if out is None:
        print(text)
    else:
        _write_section(out, "## Agent footprint", text)
        print(f"wrote {out}")
    return 0
