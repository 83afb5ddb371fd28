"""Train the shipped sample models: `python sample_models/train.py [--only NAME]`.

Contract: seeded and deterministic (single CPU thread, deterministic algorithms), offline, trains every
registered architecture on `digits_splits().train` only, measures accuracy on `.test`, and writes
`<name>.safetensors` (the state_dict; floating tensors as contiguous float32) plus a `<name>.json` card
next to this file, then regenerates `README.md` from all cards present. It also saves the weights after
`rewind_epoch` epochs (about 5% of training) as `<name>.rewind.safetensors`: the early checkpoint that
lottery-ticket weight rewinding resets to (Frankle et al. 2019). About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from safetensors.torch import save_file  # noqa: E402

from workbench.data import DIGITS_SPLIT, Dataset, Splits, digits_splits  # noqa: E402
from workbench.zoo import build, sample_names  # noqa: E402

SEED = 0


@dataclass(frozen=True)
class Recipe:
    """How one sample is trained (recorded verbatim in its card)."""

    optimizer: str
    lr: float
    weight_decay: float
    epochs: int
    batch_size: int
    schedule: str
    label_smoothing: float
    augmentation: str
    rewind_epoch: int           # the early checkpoint for weight rewinding: weights after this many epochs
    seed: int = SEED


SHIFT = "random shift of up to 1 pixel in x and y (zero fill), per sample"
COSINE = "linear warmup 5% then cosine to 0, per step"
RECIPES: dict[str, Recipe] = {
    "digits-mlp": Recipe("AdamW", 2e-3, 1e-4, 200, 64, COSINE, 0.1, SHIFT, rewind_epoch=10),
    "digits-cnn": Recipe("AdamW", 2e-3, 1e-4, 40, 64, COSINE, 0.0, SHIFT, rewind_epoch=2),
    "digits-vit": Recipe("AdamW", 1e-3, 5e-2, 250, 64, COSINE, 0.1, SHIFT, rewind_epoch=12),
}

DESCRIPTIONS: dict[str, tuple[str, list[str]]] = {
    "digits-mlp": (
        "LeNet-300-100 MLP on flattened 8x8 digits (64-300-100-10, ReLU)",
        ["Flatten 1x8x8 -> 64", "Linear 64->300 + ReLU", "Linear 300->100 + ReLU", "Linear 100->10"],
    ),
    "digits-cnn": (
        "Small CNN: three 3x3 conv+BatchNorm+ReLU blocks (32/64/128 ch), two 2x2 max-pools, linear head",
        [
            "Conv 3x3 1->32 (no bias) + BatchNorm + ReLU",
            "Conv 3x3 32->64 (no bias) + BatchNorm + ReLU",
            "MaxPool 2x2 -> 64x4x4",
            "Conv 3x3 64->128 (no bias) + BatchNorm + ReLU",
            "MaxPool 2x2 -> 128x2x2",
            "Flatten 512 -> Linear 512->10",
        ],
    ),
    "digits-vit": (
        "Tiny ViT: 2x2 patches -> 16 tokens of dim 64, 2 pre-norm encoder blocks (4 heads, MLP 128), mean-pool",
        [
            "Patch embed Conv 2x2 stride 2, 1->64 (16 tokens) + learned position embedding",
            "2 x encoder block: LayerNorm, MHSA 4 heads (qkv 64->192, proj 64->64), LayerNorm, MLP 64->128->64 GELU",
            "LayerNorm 64, mean over tokens",
            "Linear 64->10",
        ],
    ),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by dx, dy in {-1, 0, 1}, filling with zeros (pad by 1, then crop)."""
    n = x.shape[0]
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (n, 2), generator=generator)
    rows = offsets[:, 0, None] + torch.arange(8)  # (n, 8)
    cols = offsets[:, 1, None] + torch.arange(8)
    idx = torch.arange(n)[:, None, None]
    return padded[idx, 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


def lr_factor(step: int, total: int) -> float:
    warmup = max(1, int(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def accuracy(model: nn.Module, data: Dataset) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.inputs[0]))
    return float((logits.argmax(dim=1).numpy() == data.labels).mean())


def train(model: nn.Module, data: Dataset, recipe: Recipe, after_epoch: Callable[[int], None] | None = None) -> None:
    """Mini-batch training with AdamW, warmup+cosine per step and per-sample shift augmentation;
    `after_epoch(n)` runs after epoch n (from 1) and must not touch the random state."""
    generator = torch.Generator().manual_seed(recipe.seed)
    x_all, y_all = torch.from_numpy(data.inputs[0]), torch.from_numpy(data.labels)
    steps_per_epoch = math.ceil(len(data) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    model.train()
    for epoch in range(1, recipe.epochs + 1):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), recipe.batch_size):
            batch = order[start:start + recipe.batch_size]
            x = random_shift(x_all[batch], generator) if recipe.augmentation == SHIFT else x_all[batch]
            loss = loss_fn(model(x), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        if after_epoch:
            after_epoch(epoch)


def save_weights(model: nn.Module, path: Path) -> None:
    """Save the state_dict; floating tensors as contiguous float32, integer buffers kept as they are."""
    state = {
        key: (t.detach().to(torch.float32) if t.is_floating_point() else t.detach()).contiguous().clone()
        for key, t in model.state_dict().items()
    }
    save_file(state, str(path), metadata={"format": "pt"})


def make_card(name: str, model: nn.Module, recipe: Recipe, splits: Splits, test_accuracy: float,
              seconds: float) -> dict:
    architecture, layers = DESCRIPTIONS[name]
    split = {"train": len(splits.train), "calib": len(splits.calib), "test": len(splits.test),
             "seed": DIGITS_SPLIT["seed"]}
    return {
        "name": name,
        "architecture": architecture,
        "layers": layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "dataset": {"name": "sklearn digits", "split": split},
        "training": asdict(recipe),
        "test_accuracy": round(test_accuracy, 4),
        "train_seconds": round(seconds, 1),
    }


def train_one(name: str, out_dir: Path) -> dict:
    recipe = RECIPES[name]
    seed_everything(recipe.seed)
    splits = digits_splits()
    model = build(name)
    started = time.perf_counter()

    def save_rewind(epoch: int) -> None:
        if epoch == recipe.rewind_epoch:
            save_weights(model, out_dir / f"{name}.rewind.safetensors")

    train(model, splits.train, recipe, save_rewind)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, splits.test)
    card = make_card(name, model, recipe, splits, test_accuracy, seconds)
    save_weights(model, out_dir / f"{name}.safetensors")
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{name}: test accuracy {test_accuracy:.4f}, {card['parameters']} parameters, {seconds:.1f} s "
          f"(rewind checkpoint: epoch {recipe.rewind_epoch})")
    return card


def write_readme(out_dir: Path) -> None:
    paths = [out_dir / f"{name}.json" for name in sample_names()]
    cards = [json.loads(path.read_text()) for path in paths if path.is_file()]
    rows = [
        f"| `{c['name']}` | {c['parameters']:,} | {c['test_accuracy']:.4f} | {c['architecture']} |" for c in cards
    ]
    text = "\n".join([
        "# Sample models",
        "",
        "Small classifiers for scikit-learn's 8x8 digits, shipped so every workbench feature can be tried offline.",
        "Each has its weights (`<name>.safetensors`) and a card (`<name>.json`: architecture, layers, parameter",
        "count, data split, training recipe, test accuracy). Load one with `workbench.zoo.load_sample(name)`.",
        "`<name>.rewind.safetensors` holds the weights after `training.rewind_epoch` epochs (about 5% of",
        "training): the early checkpoint that `prune` with `rewind: weight` resets survivors to (lottery ticket).",
        "",
        "| name | parameters | test accuracy | architecture |",
        "|---|---:|---:|---|",
        *rows,
        "",
        "Test accuracy is measured on the fixed 360-sample test split of `workbench.data.digits_splits()`",
        "(stratified, seed 0: train 1257 / calib 180 / test 360); models are trained on the train split only.",
        "",
        "## Reproduce",
        "",
        "```",
        "python sample_models/train.py            # all models, about 2 minutes on 2 CPU cores",
        "python sample_models/train.py --only digits-cnn",
        "```",
        "",
        "Training is seeded and deterministic on one CPU thread. This file is generated by `train.py` from the cards.",
        "",
    ])
    (out_dir / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sample_names(), help="train just this sample")
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: next to this script)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in [args.only] if args.only else sample_names():
        train_one(name, args.out)
    write_readme(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
