"""The doors a corpus input is pushed through, each returning (outcome, message) for the tally.

- `api_attempt`: load_model / load_user_data / load_recipe, then run_pipeline for "run"-level cases;
  packed_model.restore for the two halves of an unpack pair.
- `cli_attempt`: `python -m workbench inspect|run|check|unpack` in a subprocess, in an empty cwd, with TMPDIR
  in the sandbox. Clear means: exit status 2, exactly one `error:` line on stderr, no traceback.
- `Sandbox`: the folders one attempt may touch. Only `home` (the data dir) may gain files; anything
  new elsewhere (the inputs folder, the cwd, TMPDIR) and the unpickling sentinel turn the outcome into
  a crash.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.reliability.corpus import FAST_MEASURE, PAIR, SENTINEL, Case, digits_onnx
from workbench.errors import WorkbenchError

ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120


@dataclasses.dataclass
class Sandbox:
    """root/inputs (the corpus files, recipes and `model`), root/home (the data dir), root/cwd (empty,
    the CLI's working dir) and root/tmp (TMPDIR)."""

    root: Path

    def __post_init__(self) -> None:
        self.inputs, self.home, self.cwd, self.tmp = (self.root / n for n in ("inputs", "home", "cwd", "tmp"))
        for folder in (self.inputs, self.home, self.cwd, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.model = self.inputs / "digits.onnx"   # the model data cases are evaluated with
        self.model.write_bytes(digits_onnx().SerializeToString())

    def snapshot(self) -> set[Path]:
        return {p for p in self.root.rglob("*") if self.home not in p.parents and p != self.home}

    def trespass(self, before: set[Path]) -> str | None:
        """What an attempt left outside the data dir (or the sentinel a pickle created), if anything."""
        if (self.inputs / SENTINEL).exists():
            return "a pickle was executed: the sentinel file exists"
        new = sorted(str(p.relative_to(self.root)) for p in self.snapshot() - before)
        return f"files created outside the data dir: {', '.join(new[:5])}" if new else None


def judge(message: str, expect: str) -> str:
    """clear / unclear for a refusal with `message`."""
    return "clear" if expect in message and "\n" not in message.strip() else "unclear"


# --- the Python API --------------------------------------------------------------------------------

def api_attempt(case: Case, path: Path, box: Sandbox) -> tuple[str, str]:
    try:
        _api(case, path, box)
    except WorkbenchError as exc:
        return judge(str(exc), case.expect), str(exc)
    except Exception as exc:  # anything but a WorkbenchError is a crash
        return "crash", f"{type(exc).__name__}: {exc}"
    return "unclear", "accepted without an error"


def _api(case: Case, path: Path, box: Sandbox) -> None:
    from workbench.data import load_user_data
    from workbench.models import load_model
    from workbench.pipeline import run_pipeline
    from workbench.specs import DataRef, MeasureSpec, ModelRef, RunSpec, load_recipe

    fast = MeasureSpec(**FAST_MEASURE | {"batch_sizes": tuple(FAST_MEASURE["batch_sizes"])})
    if case.kind in PAIR:
        from workbench.packed_model import restore

        graph, packed = _unpack_pair(case, path)
        restore(graph.read_bytes(), packed.read_bytes())
    elif case.kind == "recipe":
        spec = load_recipe(path)
        if case.level == "run":
            run_pipeline(spec)
    elif case.kind == "model":
        ref = ModelRef(path=str(path), arch=case.arch)
        load_model(ref)
        if case.level == "run":
            run_pipeline(RunSpec(model=ref, measure=fast))
    else:
        load_user_data(path)
        if case.level == "run":
            run_pipeline(RunSpec(model=ModelRef(path=str(box.model)), data=DataRef(path=str(path)), measure=fast))


# --- the command line ------------------------------------------------------------------------------

def cli_args(case: Case, path: Path, box: Sandbox) -> list[str]:
    """The command a user would type for this input; recipes for it are written to the inputs folder."""
    if case.kind in PAIR:
        graph, packed = _unpack_pair(case, path)
        return ["unpack", str(graph), str(packed), "-o", str(box.home / "restored.onnx")]
    if case.kind == "recipe":
        return ["check", str(path)] if case.level == "spec" else _run_args(path, box)
    if case.kind == "model" and case.level == "load":
        return ["inspect", str(path), *(["--arch", case.arch] if case.arch else [])]
    if case.kind == "model":
        body = {"model": {"path": str(path), "arch": case.arch}, "measure": FAST_MEASURE}
    else:
        body = {"model": {"path": str(box.model)}, "data": {"path": str(path)}, "measure": FAST_MEASURE}
    recipe = box.inputs / f"{case.name}.yaml"
    recipe.write_text(yaml.safe_dump(body))
    return _run_args(recipe, box)


def _unpack_pair(case: Case, path: Path) -> tuple[Path, Path]:
    """(graph.onnx, weights.packed) for an unpack case: its bad input and the valid half beside it."""
    other = path.parent / PAIR[case.kind]
    return (other, path) if case.kind == "packed" else (path, other)


def _run_args(recipe: Path, box: Sandbox) -> list[str]:
    return ["run", str(recipe), "--out", str(box.home / "out"), "--quiet"]


def cli_attempt(args: list[str], box: Sandbox, expect: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    env = {**os.environ, "WORKBENCH_HOME": str(box.home), "TMPDIR": str(box.tmp), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "workbench", *args], cwd=box.cwd, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)
    err = done.stderr.strip()
    if done.returncode == 0:
        return "unclear", "exit status 0: accepted without an error"
    if done.returncode != 2 or "Traceback" in err or not err.startswith("error: "):
        return "crash", f"exit status {done.returncode}: {err[-600:]}"
    if "\n" in err:
        return "unclear", f"{len(err.splitlines())} lines on stderr: {err[:600]}"
    return judge(err, expect), err
