"""workbench.thinning: the same packed bytes against a model with channels removed first."""

import numpy as np
import torch

from workbench.models import load_model
from workbench.specs import ModelRef
from workbench.thinning import lowest_fitting, packing, same_bytes


def test_a_thinner_model_keeps_more_weights_in_the_same_packed_bytes():
    module = load_model(ModelRef(sample="digits-mlp")).module
    same = same_bytes(module, (torch.zeros(2, 1, 8, 8),), 0.5)
    assert (same.full.weights, same.full.kept, same.full.sparsity) == (50_200, 5_020, 0.9)
    assert same.thin.weights == 64 * 150 + 150 * 50 + 50 * 10     # half of each hidden layer removed
    assert same.thin.bytes <= same.full.bytes and same.thin.kept > same.full.kept
    assert same.thin.position_bytes / same.thin.kept < same.full.position_bytes / same.full.kept


def test_lowest_fitting_is_the_lowest_whole_percent_within_the_budget():
    rng = np.random.default_rng(0)
    weights = {"a.weight": rng.normal(size=(64, 64)).astype(np.float32),
               "b.weight": rng.normal(size=(10, 64)).astype(np.float32)}
    budget = packing(weights, 0.7, 8).bytes
    found = lowest_fitting(weights, budget, 8)
    assert found.bytes <= budget and found.sparsity <= 0.7
    assert packing(weights, found.sparsity - 0.01, 8).bytes > budget   # one percent less does not fit
    assert lowest_fitting(weights, 10, 8).sparsity == 0.99            # nothing fits: the sparsest tried
