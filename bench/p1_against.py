"""P1 against an earlier revision, in one run: did a change make fan-out slower?

These machines differ by a third from one day to the next, so a P1 figure is only
comparable with one measured beside it. This checks out ``--against`` (a git revision)
into a temporary worktree and runs its own P1 and this tree's P1 in turn, round after
round (which one goes first alternates), each in a fresh process with its own stack; the
figure is the median of the per-round ratios, this / other.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_FIGURE = re.compile(r"^P1 \[[^\]]*\] [\d,]+ recipients: ([\d,]+) recipients/s end to end", re.MULTILINE)


@dataclass
class P1Against:
    against: str
    against_revision: str
    recipients: int
    rounds: int
    this: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.this, self.other, strict=True) if b]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios) if self.ratios else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "ratios": self.ratios,
            "median_ratio": self.median_ratio,
            "median_this": statistics.median(self.this) if self.this else None,
            "median_other": statistics.median(self.other) if self.other else None,
        }

    def summary(self) -> str:
        return (
            f"P1 against {self.against} ({self.against_revision[:10]}), {self.rounds} interleaved rounds of "
            f"{self.recipients:,} recipients: this {statistics.median(self.this):,.0f}/s, other "
            f"{statistics.median(self.other):,.0f}/s, median ratio {self.median_ratio:.3f}"
        )


def _p1(cwd: Path, recipients: int) -> float:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "p1",
            "--recipients",
            str(recipients),
            "--layouts",
            "default",
            "--no-write",
            "--no-progress",
        ],  # fmt: skip
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    match = _FIGURE.search(completed.stdout)
    if completed.returncode != 0 or match is None:
        raise RuntimeError(
            f"P1 in {cwd} failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    return float(match.group(1).replace(",", ""))


def run(*, against: str, rounds: int, recipients: int, progress: bool = True) -> P1Against:
    revision = subprocess.run(
        ["git", "rev-parse", against], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    result = P1Against(against=against, against_revision=revision, recipients=recipients, rounds=rounds)
    with tempfile.TemporaryDirectory(prefix="bench-against-") as directory:
        worktree = Path(directory) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(worktree), revision], cwd=REPO, check=True
        )
        try:
            for round_number in range(rounds):
                order = [("this", REPO), ("other", worktree)]
                if round_number % 2:
                    order.reverse()
                for label, cwd in order:
                    figure = _p1(cwd, recipients)
                    (result.this if label == "this" else result.other).append(figure)
                    if progress:
                        print(
                            f"P1 against {against}: round {round_number + 1}, {label}: {figure:,.0f}/s",
                            flush=True,
                        )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=False)
    return result
