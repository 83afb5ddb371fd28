"""Where the workbench keeps things. Every path can be overridden by an environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    home: Path
    samples_dir: Path

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


def get_settings() -> Settings:
    """Read settings from the environment (`WORKBENCH_HOME`, `WORKBENCH_SAMPLES`)."""
    home = Path(os.environ.get("WORKBENCH_HOME", Path.home() / ".workbench")).expanduser()
    samples = Path(os.environ.get("WORKBENCH_SAMPLES", REPO_ROOT / "sample_models")).expanduser()
    return Settings(home=home, samples_dir=samples)
