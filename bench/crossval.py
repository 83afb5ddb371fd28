"""Cross-validation of a compression recipe on the digits: a finer estimate than the one 360-sample test split.

The 1,797 digits are split into 5 stratified folds (seed 0). For each fold, the other four folds are split
like the shipped samples' data (`workbench.data.DIGITS_SPLIT`: 180 held out, the rest to train), a dense
model is trained on that training part with the sample's own recipe (`sample_models/train.py`: same
architecture, optimizer, schedule, augmentation and seed), and the recipe runs on it as a user's model would
(safetensors + architecture, the fold's training and test files), one `run_pipeline` call per fold and seed.
Every image is a test image exactly once, so the drop rests on 1,797 samples per seed instead of 360. The 180
held-out images of each fold (900 in all, never trained on) are its validation set: recipe variants are
chosen on them, then scored on the test folds.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.pipeline import run_pipeline
from workbench.report import Report
from workbench.specs import DataRef, MeasureSpec, ModelRef, RunSpec

FOLDS = 5
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "sample_models"


@dataclass(frozen=True)
class Fold:
    index: int
    model: Path            # the dense model trained on this fold's training part (safetensors)
    train: Path            # .npz: x, y
    test: Path             # .npz: x, y (the held-out fold)
    validation: Path       # .npz: x, y (the 180 images held out of the training part)
    test_samples: int
    dense_accuracy: float  # torch, on the held-out fold


def _trainer():
    """The shipped samples' training code (`sample_models/train.py`), imported from its file."""
    sys.path.insert(0, str(SAMPLES_DIR))
    try:
        import train
    finally:
        sys.path.remove(str(SAMPLES_DIR))
    return train


@contextmanager
def folds(model: str) -> Iterator[list[Fold]]:
    """Train one dense `model` per fold (seconds each for the digits MLP) into a temporary directory."""
    import torch
    from sklearn.model_selection import StratifiedKFold, train_test_split

    from workbench.data import DIGITS_SPLIT, Dataset, digits_arrays
    from workbench.zoo import build

    train = _trainer()
    x, y = digits_arrays()
    seed = DIGITS_SPLIT["seed"]
    deterministic = torch.are_deterministic_algorithms_enabled()
    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for index, (rest, held) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, y)):
            fit, val = train_test_split(rest, test_size=DIGITS_SPLIT["calib"], random_state=seed, stratify=y[rest])
            train.seed_everything(train.RECIPES[model].seed)
            dense = build(model)
            train.train(dense, Dataset("fold/train", (x[fit],), y[fit]), train.RECIPES[model])
            paths = [Path(tmp) / f"{name}{index}{suffix}" for name, suffix in
                     (("model", ".safetensors"), ("train", ".npz"), ("test", ".npz"), ("validation", ".npz"))]
            train.save_weights(dense, paths[0])
            for path, rows in zip(paths[1:], (fit, held, val), strict=True):
                np.savez(path, x=x[rows], y=y[rows])
            accuracy = train.accuracy(dense, Dataset("fold/test", (x[held],), y[held]))
            out.append(Fold(index, *paths, len(held), accuracy))
        torch.use_deterministic_algorithms(deterministic)
        yield out


def run(fold: Fold, model: str, stages: tuple, measure: MeasureSpec, name: str,
        keep: Callable[[Report, Path], dict], validation: bool = False) -> dict:
    """One recipe on one fold, scored on its test fold (or its validation images); `keep(report, out_dir)`
    picks what to return while the run's files exist."""
    scored = fold.validation if validation else fold.test
    spec = RunSpec(model=ModelRef(path=str(fold.model), arch=model),
                   data=DataRef(path=str(scored), train_path=str(fold.train)),
                   stages=stages, measure=measure, name=f"{name}, fold {fold.index}")
    with tempfile.TemporaryDirectory() as tmp:
        return keep(run_pipeline(spec, out_dir=tmp), Path(tmp))


def fold_result(report: Report, out: Path) -> dict:
    """What a cross-validation run keeps: the paired counts against its fold's dense model, the drop and the
    packed ratio (None without a `weights.packed`)."""
    base, final = report.baseline.measurement, report.final.measurement
    packed = out / "weights.packed"
    return {"worse": final.paired.worse, "better": final.paired.better, "samples": final.eval_samples,
            "drop": 100 * (base.metrics["accuracy"] - final.metrics["accuracy"]),
            "ratio": base.size.file_bytes / packed.stat().st_size if packed.is_file() else None}


def pooled(runs: list[dict]) -> tuple[int, int, int, float]:
    """(worse, better, scored samples, drop in pt) summed over runs: every scored sample of every run counts once."""
    worse, better, samples = (sum(r[k] for r in runs) for k in ("worse", "better", "samples"))
    return worse, better, samples, 100 * (worse - better) / samples


@dataclass(frozen=True)
class CrossValidation:
    folds: list[Fold]
    validation: dict[str, list[dict]]           # variant -> runs on the validation images (every fold × seed)
    test: dict[str, dict[int, list[dict]]]      # arm -> fold index -> runs on the test fold, one per seed
    chosen: str                                 # the variant the validation chose


def choose(validation: dict[str, list[dict]], min_ratio: float) -> str:
    """The variant with the lowest pooled validation drop among those whose every run packs at least
    `min_ratio` times smaller; a tie goes to the smaller packed size (no such variant: among all)."""
    fits = [arm for arm, runs in validation.items() if all((r["ratio"] or 0) >= min_ratio for r in runs)]
    return min(fits or list(validation),
               key=lambda arm: (pooled(validation[arm])[3], -sum(r["ratio"] or 0 for r in validation[arm])))


def cross_validate(model: str, variants: dict[str, Callable[[int], tuple]], controls: dict[str, Callable[[int], tuple]],
                   measure: MeasureSpec, seeds: int, validation_seeds: int, min_ratio: float) -> CrossValidation:
    """Every variant on every fold's validation images (seeds 0..validation_seeds-1), then the first variant
    (the reference), the one the validation chose and the controls on every test fold (seeds 0..seeds-1)."""
    def runs(fold: Fold, arm: str, stages: Callable[[int], tuple], count: int, validation: bool) -> list[dict]:
        where = "validation" if validation else "test"
        print(f"{model}: cross-validation fold {fold.index} ({where}), {arm}", file=sys.stderr, flush=True)
        return [run(fold, model, stages(seed), measure, arm, fold_result, validation) for seed in range(count)]

    with folds(model) as trained:
        validation = {arm: [r for fold in trained for r in runs(fold, arm, stages, validation_seeds, True)]
                      for arm, stages in variants.items()}
        chosen = choose(validation, min_ratio)
        reference = next(iter(variants))
        arms = {reference: variants[reference], chosen: variants[chosen], **controls}
        test = {arm: {fold.index: runs(fold, arm, stages, seeds, False) for fold in trained}
                for arm, stages in arms.items()}
    return CrossValidation(trained, validation, test, chosen)
