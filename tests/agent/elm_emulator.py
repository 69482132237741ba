"""ELM327-emulator as a real peer: a subprocess on a pseudo-tty, driven through its stdin.

``python -m elm -s car -b OUT`` writes the pty's path as the first line of OUT, then reads
commands on stdin; a line it does not know as a command it runs as Python with
``emulator`` (its ``Elm`` object) in scope. Its ``emulator.answer`` dictionary overrides
the scenario's answer to a PID by name (``'SPEED'``, ``'RPM'``, ``'VIN'``), as the XML the
scenarios use; ``emulator.delay`` delays every answer. Each change is followed by a
``print`` of a marker with flush, and waited for in OUT, so it is in force on return.

The port the bus opens is a symlink to the pty (as udev's /dev/serial/by-id links are): a
new emulator gets a new pty, and the link moves to it.
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

START_TIMEOUT_S = 10.0
"""The longest the emulator may take to print its pty."""

COMMAND_TIMEOUT_S = 5.0
"""The longest one stdin command may take to be carried out."""


def frame(header: str, data: str) -> str:
    """One single-frame CAN answer from ``header`` with ``data`` (hex bytes, spaced)."""
    size = len(bytes.fromhex(data))
    return f"<header>{header}</header><size>{size:02X}</size><data>{data}</data>"


def speed_answer(kmh: int) -> str:
    """Mode 01 PID 0D from the engine ECU: ``kmh`` km/h."""
    return frame("7E8", f"41 0D {kmh:02X}")


def rpm_answer(rpm: float) -> str:
    """Mode 01 PID 0C from the engine ECU: ``rpm`` (a multiple of 0.25)."""
    raw = round(rpm * 4)
    return frame("7E8", f"41 0C {raw >> 8:02X} {raw & 0xFF:02X}")


def vin_answer(text: bytes) -> str:
    """Mode 09 PID 02: the count byte then ``text``; the emulator frames it (ISO-TP)."""
    return "<pos_answer>01 " + " ".join(f"{b:02X}" for b in text) + "</pos_answer>"


NO_DATA = "<writeln>NO DATA</writeln>"
"""What an ELM327 says when no ECU answers."""


class ElmEmulator:
    """One running ``python -m elm`` on a pty, reachable at ``link``; always ``kill()`` it."""

    def __init__(self, workdir: Path, link: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.link = link
        self._out = workdir / "elm.out"
        self._out.unlink(missing_ok=True)
        self._stderr = (workdir / "elm.stderr").open("w")
        self._marks = 0
        # cwd: the emulator writes elm.log there.
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "elm", "-s", "car", "-b", str(self._out)],
            cwd=workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            text=True,
        )
        try:
            self.pty = self._await_pty()
            tmp = link.with_name(link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self.pty)
            tmp.replace(link)
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def _output(self) -> str:
        return self._out.read_text() if self._out.exists() else ""

    def _await_pty(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            first = self._output().partition("\n")
            if first[1] and first[0].startswith("/dev/"):
                return first[0]
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"ELM327-emulator did not start: {self._failure()}")

    def _failure(self) -> str:
        self._stderr.flush()
        err = Path(self._stderr.name).read_text()[-2000:]
        return f"exit code {self._proc.poll()}; output {self._output()!r}; stderr {err!r}"

    def command(self, line: str) -> None:
        """Run one interpreter command (or Python line) and wait until it is done."""
        assert self._proc.stdin is not None and self._proc.poll() is None
        self._marks += 1
        mark, previous = f"<done {self._marks}>", f"<done {self._marks - 1}>"
        self._proc.stdin.write(f"{line}\nprint({mark!r}, flush=True)\n")
        self._proc.stdin.flush()
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        while time.monotonic() < deadline:
            out = self._output()
            if mark in out:
                if "Error executing command" in out.rpartition(previous)[2]:
                    raise RuntimeError(f"the emulator refused {line!r}: {out[-500:]!r}")
                return
            time.sleep(0.01)
        raise RuntimeError(f"the emulator did not run {line!r}: {self._failure()}")

    def answer(self, pid: str, xml: str) -> None:
        """Answer ``pid`` (a scenario key such as 'SPEED') with ``xml`` until reset."""
        self.command(f"emulator.answer[{pid!r}] = {xml!r}")

    def reset(self, pid: str) -> None:
        """Answer ``pid`` as the scenario does."""
        self.command(f"emulator.answer.pop({pid!r}, None)")

    def delay(self, seconds: float) -> None:
        """Delay every answer by ``seconds`` (0 for none)."""
        self.command(f"emulator.delay = {seconds!r}")

    def kill(self) -> None:
        """SIGKILL the emulator (its pty goes with it) and reap it; idempotent."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=START_TIMEOUT_S)
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        if not self._stderr.closed:
            self._stderr.close()

    @property
    def running(self) -> bool:
        """Whether the emulator process is alive."""
        return self._proc.poll() is None


def remove_link(link: Path) -> None:
    """Drop the port link (as udev does when the adapter is unplugged)."""
    if link.is_symlink():
        os.unlink(link)
