"""The reliability group's bookkeeping: a tally of inputs tried, clear errors, crashes, faults injected
and runs lost, printed at the end of the pytest run and written to `.ci/reliability-summary.json`
(git-ignored) for `.ci/run`, which prints it again and fails when crashes or runs lost are not 0.

An outcome is *clear* when the input was refused with one `WorkbenchError` line (or, in the CLI, exactly
one `error:` line on stderr and exit status 2) containing the case's expected fragment; *unclear* when
it was refused with some other message; a *crash* when anything else escaped (another exception, a
traceback, an app exception element, a file created outside the data dir, a pickle that ran).
Every test module in this package sets `pytestmark = pytest.mark.reliability` (`pytest -m reliability`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

SUMMARY_FILE = Path(".ci") / "reliability-summary.json"


@dataclass
class Tally:
    inputs_tried: int = 0
    clear_errors: int = 0
    unclear_errors: int = 0
    crashes: int = 0
    faults_injected: int = 0
    runs_checked: int = 0
    runs_lost: int = 0
    problems: list[str] = field(default_factory=list)

    def outcome(self, where: str, outcome: str, detail: str) -> None:
        """Count one input pushed through one entry point: outcome is "clear", "unclear" or "crash"."""
        self.inputs_tried += 1
        if outcome == "clear":
            self.clear_errors += 1
            return
        if outcome == "crash":
            self.crashes += 1
        else:
            self.unclear_errors += 1
        self.problems.append(f"{where}: {outcome}: {detail[:300]}")

    def runs(self, where: str, checked: int, lost: list[str]) -> None:
        """Count runs whose fate was checked after a fault; `lost` describes the ones not accounted for."""
        self.runs_checked += checked
        self.runs_lost += len(lost)
        self.problems += [f"{where}: run lost: {detail}" for detail in lost]

    def lines(self) -> list[str]:
        return [
            f"inputs tried     {self.inputs_tried}",
            f"clear errors     {self.clear_errors}" + (f" ({self.unclear_errors} unclear)" if self.unclear_errors
                                                        else ""),
            f"crashes          {self.crashes}   (must be 0)",
            f"faults injected  {self.faults_injected}",
            f"runs lost        {self.runs_lost} of {self.runs_checked} checked   (must be 0)",
            *(f"  ! {p}" for p in self.problems),
        ]


_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return _TALLY


def pytest_terminal_summary(terminalreporter, config) -> None:
    if not (_TALLY.inputs_tried or _TALLY.faults_injected):
        return  # the reliability group did not run: leave any earlier summary file alone
    terminalreporter.write_sep("=", "reliability summary")
    for line in _TALLY.lines():
        terminalreporter.write_line(line)
    path = config.rootpath / SUMMARY_FILE
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(asdict(_TALLY), indent=2) + "\n")
    terminalreporter.write_line(f"(written to {path})")
