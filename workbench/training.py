"""The one mini-batch training loop behind recovery fine-tuning, distillation and head re-training.

Contract: `train_epochs` shuffles the samples each epoch with its own seeded generator (not the global
torch RNG, which only the model's own dropout draws from), steps `optimizer` once per batch with the
learning rate multiplied by `lr_factor(step)`, calls `after_step` after every step (masks are
re-applied there), and yields (epoch from 1, mean loss of the epoch) with `model` back in eval mode, so
callers measure between epochs. `cancelled()` is polled after every step; when it says yes the loop
stops without yielding. What is trained, the loss and the optimizer belong to the caller; this module
knows nothing of pruning, teachers or heads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

# loss(outputs, labels, batch indices): the indices let a loss look up per-sample targets (soft labels)
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def lr_schedule(kind: str, steps: int) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step: "cosine" decays from 1 to 0 over `steps`, else constant 1."""
    if kind == "constant":
        return lambda step: 1.0
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def train_epochs(model: nn.Module, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, loss_fn: Loss,
                 optimizer: torch.optim.Optimizer, epochs: int, batch_size: int, seed: int,
                 lr_factor: Callable[[int], float], after_step: Callable[[], None] | None = None,
                 cancelled: Callable[[], bool] | None = None) -> Iterator[tuple[int, float]]:
    """Train `model` in place; yields (epoch, mean loss) after each epoch (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(labels), generator=generator)
            losses = []
            for start in range(0, len(labels), batch_size):
                idx = order[start:start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(*(t[idx] for t in inputs)), labels[idx], idx)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if after_step:
                    after_step()
                losses.append(loss.item())
                if cancelled and cancelled():
                    return
            model.eval()
            yield epoch, float(np.mean(losses))
    finally:
        model.eval()
