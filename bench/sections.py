"""BENCHMARKS.md is assembled from sections, one per benchmark script, so each script can regenerate
its own part without losing the others'. A section sits between `<!-- name:start -->` and
`<!-- name:end -->`; sections keep the order in which they were first written."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery number is measured on the machine named in its section, by the script named there.\n"


def write_section(name: str, text: str, path: Path = BENCHMARKS) -> None:
    block = f"<!-- {name}:start -->\n{text.strip()}\n<!-- {name}:end -->"
    current = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    updated = pattern.sub(lambda _: block, current) if pattern.search(current) else f"{current.rstrip()}\n\n{block}\n"
    path.write_text(updated if updated.endswith("\n") else updated + "\n")


def cell(key: str, value) -> str:
    """A table cell: accuracy to 4 places, deltas signed, counts with separators, sub-ms latencies to 3 places."""
    if value is None or value == "":
        return ""
    if key == "accuracy":
        return f"{value:.4f}"
    if key.startswith("Δ"):
        return f"{value:+.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if key == "width":
            return f"{value:g}"
        return f"{value:.3f}" if key.startswith(("ms", "base ms")) and value < 1 else f"{value:.2f}"
    return str(value)


def progress_logging() -> None:
    """One line per finished cell on stderr; the libraries' own logs at warnings only."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    for noisy in ("workbench", "torch", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
