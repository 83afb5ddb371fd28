"""Sample models and their data: shipped weights load and score what their cards say; bad weights fail clearly.

Contract checked here: every registered sample has a card and safetensors in `sample_models/`; its accuracy,
recomputed on the fixed digits test split, matches the card (within 0.002); the digits split is fixed; and
`load_weights`/`build` raise `WorkbenchError` naming the problem instead of a raw library error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from workbench.data import Splits, digits_splits
from workbench.errors import WorkbenchError
from workbench.settings import REPO_ROOT
from workbench.zoo import build, load_sample, load_weights, sample_card, sample_names

MIN_ACCURACY = {"digits-mlp": 0.97, "digits-cnn": 0.97}


@pytest.fixture(autouse=True)
def shipped_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_SAMPLES", str(REPO_ROOT / "sample_models"))


@pytest.fixture(scope="module")
def splits() -> Splits:
    return digits_splits()


def test_registry_has_the_three_samples() -> None:
    assert sample_names() == ["digits-cnn", "digits-mlp", "digits-vit"]


def test_digits_split_is_fixed(splits: Splits) -> None:
    assert splits.train is not None
    assert (len(splits.train), len(splits.calib), len(splits.test)) == (1257, 180, 360)
    again = digits_splits()
    for first, second in ((splits.train, again.train), (splits.calib, again.calib), (splits.test, again.test)):
        assert second is not None
        np.testing.assert_array_equal(first.inputs[0], second.inputs[0])
        np.testing.assert_array_equal(first.labels, second.labels)
    # the 1797 sklearn digits images are pairwise distinct, so disjoint splits have disjoint image sets
    rows = [{row.tobytes() for row in part.inputs[0]} for part in (splits.train, splits.calib, splits.test)]
    assert len(rows[0] | rows[1] | rows[2]) == sum(map(len, rows)) == 1797
    assert splits.test.inputs[0].shape[1:] == (1, 8, 8)
    assert float(splits.test.inputs[0].min()) >= 0.0 and float(splits.test.inputs[0].max()) <= 1.0


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "digits-vit"])
def test_sample_matches_its_card(name: str, splits: Splits) -> None:
    model = load_sample(name)
    card = sample_card(name)
    assert not model.training
    with torch.no_grad():
        logits = model(torch.from_numpy(splits.test.inputs[0]))
    assert logits.shape == (360, 10)
    accuracy = float((logits.argmax(dim=1).numpy() == splits.test.labels).mean())
    assert accuracy == pytest.approx(card["test_accuracy"], abs=0.002)
    assert accuracy >= MIN_ACCURACY.get(name, 0.9)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert card["name"] == name and card["input_shape"] == [1, 8, 8] and card["num_classes"] == 10
    assert card["dataset"]["split"] == {"train": 1257, "calib": 180, "test": 360, "seed": 0}
    assert {"optimizer", "lr", "epochs", "batch_size", "seed", "augmentation"} <= set(card["training"])


def _mlp_state() -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in build("digits-mlp").state_dict().items()}


def test_load_weights_names_a_missing_tensor(tmp_path) -> None:
    state = _mlp_state()
    del state["fc3.bias"]
    path = tmp_path / "missing.safetensors"
    save_file(state, str(path))
    with pytest.raises(WorkbenchError, match=r"missing fc3\.bias"):
        load_weights(build("digits-mlp"), path, "missing.safetensors")


def test_load_weights_names_a_misshaped_tensor(tmp_path) -> None:
    state = _mlp_state()
    state["fc1.weight"] = torch.zeros(300, 63)
    path = tmp_path / "shape.safetensors"
    save_file(state, str(path))
    with pytest.raises(WorkbenchError, match=r"shape mismatch in fc1\.weight"):
        load_weights(build("digits-mlp"), path, "shape.safetensors")


def test_load_weights_rejects_random_bytes(tmp_path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(WorkbenchError, match=r"noise\.safetensors: not a readable safetensors file"):
        load_weights(build("digits-mlp"), path, "noise.safetensors")


def test_build_rejects_unknown_architecture() -> None:
    with pytest.raises(WorkbenchError, match=r"unknown architecture 'nope'"):
        build("nope")


def test_missing_sample_files_are_reported(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_SAMPLES", str(tmp_path))
    with pytest.raises(WorkbenchError, match="weights missing"):
        load_sample("digits-mlp")
    with pytest.raises(WorkbenchError, match="has no card"):
        sample_card("digits-mlp")
