"""The hostile suite's figures: per attack, how many attempts, and how each one ended.

Every attempt ends in one of: **refused** (the typed refusal the attack must get: an
``error`` reply with its code, a SUBACK/CONNACK/PUBACK failure code, an HTTP status and
error code, a counted drop), or not; and it may also have **leaked** (the attacker learned
or received something it must not) or **crashed** something (a process or task died, an
untyped exception, an HTTP 500). An attack holds when every attempt was refused and
nothing leaked or crashed. ``Figures`` collects one ``Tally`` per attack for the whole run;
the suite's conftest prints it at the end and writes it as Markdown.
"""

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

GROUPS = (
    "car → cloud envelopes",
    "replay",
    "cross-car (broker)",
    "broker bytes",
    "fleet API",
    "insurer webhooks",
    "rate limit",
    "hostile broker → agent",
    "slow clients",
    "parsers (hypothesis)",
    "API schema (schemathesis)",
)
"""The table's sections, in order."""


@dataclass
class Tally:
    """One attack's counts; ``record`` each attempt as it ends."""

    attack: str
    group: str
    expected: str
    """The refusal every attempt must get."""
    proof: str
    """The test that replays it (pytest node id)."""
    attempts: int = 0
    refused: int = 0
    leaked: int = 0
    crashes: int = 0
    valid: int = 0
    """Inputs a parser accepted as valid (property rows: not attacks, not refusals)."""
    notes: list[str] = field(default_factory=list)
    """What went wrong, attempt by attempt (the first few)."""

    def record(
        self, *, refused: bool, leaked: bool = False, crashed: bool = False, what: str = ""
    ) -> None:
        """Count one attempt; ``what`` names it in the notes when it was not a clean refusal."""
        self.attempts += 1
        self.refused += refused
        self.leaked += leaked
        self.crashes += crashed
        if (not refused or leaked or crashed) and len(self.notes) < 8:
            flags = [
                f
                for f, on in (
                    ("not refused", not refused),
                    ("leaked", leaked),
                    ("crashed", crashed),
                )
                if on
            ]
            self.notes.append(f"{what or f'attempt {self.attempts}'}: {', '.join(flags)}")

    def record_valid(self) -> None:
        """Count one input that parsed as valid (property rows)."""
        self.attempts += 1
        self.valid += 1

    def crashed(self, what: str) -> None:
        """Count a crash found after the attempts (e.g. the worker no longer answers)."""
        self.crashes += 1
        if len(self.notes) < 8:
            self.notes.append(f"{what}: crashed")

    @property
    def held(self) -> bool:
        """Every attempt refused (or, on a property row, valid), nothing leaked or crashed."""
        return (
            self.attempts > 0
            and self.refused + self.valid == self.attempts
            and self.leaked == 0
            and self.crashes == 0
        )

    def check(self) -> None:
        """Fail the test, naming what happened, unless the attack held."""
        assert self.held, (
            f"{self.attack}: {self.attempts} attempts, {self.refused} refused, "
            f"{self.leaked} leaked, {self.crashes} crashes; {self.notes}"
        )


@dataclass
class Figures:
    """Every attack's tally in one run."""

    started: float = field(default_factory=time.time)
    tallies: dict[str, Tally] = field(default_factory=dict)

    def tally(self, attack: str, *, group: str, expected: str, proof: str) -> Tally:
        """The tally of ``attack`` (made the first time; a re-run test adds to it)."""
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}")
        found = self.tallies.get(attack)
        if found is None:
            found = self.tallies[attack] = Tally(attack, group, expected, proof)
        return found

    def ordered(self) -> list[Tally]:
        return sorted(self.tallies.values(), key=lambda t: GROUPS.index(t.group))

    def totals(self) -> Tally:
        total = Tally("total", "", "", "")
        for t in self.tallies.values():
            total.attempts += t.attempts
            total.refused += t.refused
            total.leaked += t.leaked
            total.crashes += t.crashes
            total.valid += t.valid
        return total

    def terminal_lines(self) -> list[str]:
        """The table for the terminal: one line per attack."""
        rows = [("attack", "attempts", "refused", "valid", "leaked", "crashes", "")]
        for t in [*self.ordered(), self.totals()]:
            mark = "" if t.attack == "total" else ("held" if t.held else "NOT HELD")
            rows.append(
                (
                    t.attack[:58],
                    str(t.attempts),
                    str(t.refused),
                    str(t.valid) if t.valid else "",
                    str(t.leaked),
                    str(t.crashes),
                    mark,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = []
        for r in rows:
            right = [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
            cells = [r[0].ljust(widths[0]), *right]
            lines.append("  ".join(cells).rstrip())
        for t in self.ordered():
            lines.extend(f"  {t.attack}: {note}" for note in t.notes)
        return lines

    def markdown(self, command: str, profile: str) -> str:
        """The table as Markdown, with the command that produced it."""
        took = time.time() - self.started
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.started))
        out = [
            "# Hostile suite figures",
            "",
            f"Produced by `{command}` on {when} ({platform.python_implementation()} "
            f"{platform.python_version()}, {platform.machine()}), hypothesis profile "
            f"`{profile}`, in {took:.0f} s. Refused: the typed refusal expected; valid: "
            "inputs a parser accepted (property rows); leaked: the attacker learned or "
            "received what it must not; crashes: a process or task died, an untyped "
            "exception, an HTTP 500.",
            "",
            "| group | attack | expected refusal | attempts | refused | valid | leaked "
            "| crashes | proof |",
            "|---|---|---|--:|--:|--:|--:|--:|---|",
        ]
        for t in self.ordered():
            out.append(
                f"| {t.group} | {t.attack} | {t.expected} | {t.attempts:,} | {t.refused:,} "
                f"| {t.valid:,} | {t.leaked} | {t.crashes} | `{t.proof}` |"
            )
        total = self.totals()
        out.append(
            f"| **total** | {len(self.tallies)} attacks | | {total.attempts:,} "
            f"| {total.refused:,} | {total.valid:,} | {total.leaked} | {total.crashes} | |"
        )
        failing = [t for t in self.ordered() if not t.held]
        out.append("")
        if failing:
            out.append("**Not held:**")
            out.append("")
            for t in failing:
                out.append(f"- {t.attack}: " + "; ".join(t.notes or ["no attempts"]))
        else:
            out.append("Every attack held: every attempt refused, nothing leaked or crashed.")
        return "\n".join(out) + "\n"

    def write(self, path: Path, command: str, profile: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.markdown(command, profile), encoding="utf-8")
