"""Evaluation data: the built-in digits splits and user files (.npz, .csv).

A `Dataset` holds positional model inputs (one array per model input, samples on axis 0) and optional
integer labels. Without labels, callers measure *fidelity* against the original model instead of
accuracy. This module knows nothing about models beyond reshaping inputs to a declared shape.

User files are never unpickled (`allow_pickle=False`). A bad file is one `WorkbenchError` line naming the
file and the array, row or column at fault: missing `x`, text or non-finite values, ragged rows, sample
counts that disagree, labels that are not non-negative integers.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.errors import WorkbenchError

DIGITS_SPLIT = {"seed": 0, "test": 360, "calib": 180}  # the rest (1257) is train; fixed for every run
LABEL_COLUMNS = ("label", "y", "target", "class")


@dataclass(frozen=True)
class Dataset:
    name: str
    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs[0])

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(self.labels.max()) + 1

    def take(self, n: int) -> Dataset:
        """The first `n` samples (deterministic: splits are already shuffled)."""
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(self.name, tuple(x[:n] for x in self.inputs), labels)

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """At most `n` samples drawn at random (seeded), in random order: any prefix of it (`take`) is a fair
        sample too, even of a user's file sorted by class, whose first rows hold only the first classes."""
        index = np.random.default_rng(seed).permutation(len(self))[:n]
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.name, tuple(x[index] for x in self.inputs), labels)


@dataclass(frozen=True)
class Splits:
    """Train (for fine-tuning; None for eval-only user data), calibration and test sets."""

    train: Dataset | None
    calib: Dataset
    test: Dataset

    @property
    def solving(self) -> Dataset:
        """The inputs that reconstruction and activation-aware pruning read (labels unused): the training
        split, else the calibration split."""
        return self.train if self.train is not None else self.calib

    def solving_sample(self, n: int) -> Dataset:
        """At most `n` solving inputs, a fixed random draw (the same for a run and its preview): a prefix of a
        training file sorted by class would hold only its first classes."""
        return self.solving.sample(n)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's 8x8 digits: images scaled to [0, 1], shaped (N, 1, 8, 8), and int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8), bunch.target.astype(np.int64)


def digits_splits() -> Splits:
    """`digits_arrays()` in a fixed stratified split."""
    from sklearn.model_selection import train_test_split

    x, y = digits_arrays()
    seed = DIGITS_SPLIT["seed"]
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=DIGITS_SPLIT["test"], random_state=seed, stratify=y
    )
    x_train, x_cal, y_train, y_cal = train_test_split(
        x_rest, y_rest, test_size=DIGITS_SPLIT["calib"], random_state=seed, stratify=y_rest
    )
    return Splits(
        train=Dataset("digits/train", (x_train,), y_train),
        calib=Dataset("digits/calib", (x_cal,), y_cal),
        test=Dataset("digits/test", (x_test,), y_test),
    )


def load_user_data(path: str | Path, input_names: list[str] | None = None,
                   label_column: str | None = None) -> Dataset:
    """Load a `.npz` (`x`, optional `y`) or `.csv` (numeric features + optional label column)."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"{path}: data file not found")
    if path.stat().st_size == 0:
        raise WorkbenchError(f"{path.name}: the file is empty")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, input_names or [])
    if suffix == ".csv":
        return _load_csv(path, label_column)
    raise WorkbenchError(f"{path.name}: unsupported data format '{suffix}' (use .npz with x/y or .csv)")


def check_training_data(train: Dataset, test: Dataset) -> None:
    """A training file must carry labels and samples that fit where the evaluation data's fit: the same
    number of inputs, each with as many values per sample."""
    if train.labels is None:
        raise WorkbenchError(f"{train.name}: training data needs labels (a 'y' array in .npz, or a label column "
                             "in .csv)")
    if len(train.inputs) != len(test.inputs):
        raise WorkbenchError(f"{train.name}: {len(train.inputs)} input(s), the evaluation data ({test.name}) has "
                             f"{len(test.inputs)}")
    for i, (a, b) in enumerate(zip(train.inputs, test.inputs, strict=True)):
        if math.prod(a.shape[1:]) != math.prod(b.shape[1:]):
            which = f"input {i}: " if len(train.inputs) > 1 else ""
            raise WorkbenchError(f"{train.name}: {which}samples have shape {tuple(a.shape[1:])}, the evaluation "
                                 f"data's ({test.name}) {tuple(b.shape[1:])}")


def _load_npz(path: Path, input_names: list[str]) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile/ValueError: any unreadable file is a user error
        raise WorkbenchError(f"{path.name}: not a readable .npz file ({exc})") from None
    if input_names and all(n in arrays for n in input_names):
        keys = list(input_names)
    elif "x" in arrays:
        keys = ["x"]
    elif "x0" in arrays:
        keys = [f"x{i}" for i in range(len(arrays)) if f"x{i}" in arrays]
    else:
        raise WorkbenchError(f"{path.name}: no 'x' array (found: {', '.join(sorted(arrays)) or 'none'})")
    return _checked(path.name, {k: arrays[k] for k in keys}, arrays.get("y"))


def _load_csv(path: Path, label_column: str | None) -> Dataset:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader if row]   # blank lines skipped, line numbers kept
    except (UnicodeDecodeError, csv.Error) as exc:
        raise WorkbenchError(f"{path.name}: not a readable UTF-8 CSV file ({_first_line(exc)})") from None
    if len(rows) < 2:
        raise WorkbenchError(f"{path.name}: needs a header row and at least one data row")
    header, body = [h.strip() for h in rows[0][1]], [row for _, row in rows[1:]]
    label_col = label_column or next((h for h in header if h.lower() in LABEL_COLUMNS), None)
    if label_column and label_column not in header:
        raise WorkbenchError(f"{path.name}: label column '{label_column}' not in header")
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise WorkbenchError(f"{path.name}: row {line} has {len(row)} columns, the header has {len(header)}")
    try:
        table = np.array([[float(v) for v in row] for row in body], dtype=np.float64)
    except ValueError as exc:
        raise WorkbenchError(f"{path.name}: all columns must be numeric ({exc})") from None
    features = [i for i, h in enumerate(header) if h != label_col]
    labels = table[:, header.index(label_col)] if label_col else None
    return _checked(path.name, {"features": table[:, features].astype(np.float32)}, labels)


def _checked(name: str, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> Dataset:
    counts = {key: len(x) if x.ndim else 0 for key, x in inputs.items()}
    for key, x in inputs.items():
        if x.dtype.kind not in "biuf":
            raise WorkbenchError(f"{name}: {key} holds {x.dtype} values; inputs must be numbers")
        if counts[key] == 0:
            raise WorkbenchError(f"{name}: {key} has no samples")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise WorkbenchError(f"{name}: NaN or infinite values in {key}")
    if len(set(counts.values())) > 1:
        raise WorkbenchError(f"{name}: inputs have different sample counts "
                             f"({', '.join(f'{k}: {c}' for k, c in counts.items())})")
    n = next(iter(counts.values()))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise WorkbenchError(f"{name}: labels have shape {labels.shape}, expected ({n},)")
        if not _class_ids(labels):
            raise WorkbenchError(f"{name}: labels must be non-negative integers")
        labels = labels.astype(np.int64)
    return Dataset(name, tuple(inputs.values()), labels)


def _class_ids(labels: np.ndarray) -> bool:
    if labels.dtype.kind in "iu":
        return bool((labels >= 0).all())
    if labels.dtype.kind == "f":
        return bool(np.isfinite(labels).all() and (labels >= 0).all() and (labels == np.round(labels)).all())
    return False


def adapt_to_shape(x: np.ndarray, shape: list[int | str | None], dtype: np.dtype, source: str) -> np.ndarray:
    """Reshape/cast samples to a model input (`shape` includes the batch axis; names mean dynamic)."""
    per_sample = shape[1:]
    if all(isinstance(d, int) and d > 0 for d in per_sample):
        want = math.prod(per_sample)   # exact for any declared size (numpy's product would overflow)
        if math.prod(x.shape[1:]) != want:
            raise WorkbenchError(
                f"{source}: samples have shape {tuple(x.shape[1:])}, the model expects {tuple(per_sample)}"
            )
        x = x.reshape((len(x), *per_sample))
    return x.astype(dtype, copy=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
