import numpy as np
import pytest
import torch
from torch import nn

from workbench.activations import onnx_input_rms, torch_input_rms
from workbench.data import Dataset
from workbench.export import export_onnx
from workbench.pruning import onnx_weights, torch_weights
from workbench.reconstruct import patches


def _im2col_rms(x: torch.Tensor, conv: nn.Conv2d) -> np.ndarray:
    rows = patches(x, conv.kernel_size, conv.stride, conv.padding, conv.dilation).double()
    return rows.pow(2).mean(0).sqrt().reshape(conv.in_channels, *conv.kernel_size).numpy()


def test_linear_rms_is_per_input_feature_over_every_row_and_zero_for_a_blank_input():
    layer = nn.Linear(4, 3)
    x = np.random.default_rng(0).normal(size=(50, 5, 4)).astype(np.float32)   # tokens: rows over both axes
    x[..., 2] = 0
    rms, skipped = torch_input_rms(layer, ["weight"], (x,))
    assert skipped == []
    expected = np.sqrt((x.reshape(-1, 4).astype(np.float64) ** 2).mean(0))
    np.testing.assert_allclose(rms["weight"], expected[None], rtol=1e-6)
    assert rms["weight"][0, 2] == 0 and rms["weight"].shape == (1, 4)


@pytest.mark.parametrize("kwargs", [{"padding": 1}, {"stride": 2, "padding": 2, "dilation": 2}, {"padding": 0}])
def test_conv_rms_equals_the_im2col_columns(kwargs):
    conv = nn.Conv2d(3, 5, 3, **kwargs)
    x = torch.randn(7, 3, 9, 9)
    rms, _ = torch_input_rms(conv, ["weight"], (x.numpy(),))
    np.testing.assert_allclose(rms["weight"][0], _im2col_rms(x, conv), rtol=1e-5)


def test_a_grouped_convolution_reads_each_output_units_own_channels():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    x = torch.randn(5, 4, 6, 6)
    x[:, 3] *= 10                   # a loud channel: only the second group's units read it
    rms, _ = torch_input_rms(conv, ["weight"], (x.numpy(),))
    full = _im2col_rms(x, nn.Conv2d(4, 6, 3, padding=1))
    assert rms["weight"].shape == conv.weight.shape
    np.testing.assert_allclose(rms["weight"][:3], np.broadcast_to(full[:2], (3, 2, 3, 3)), rtol=1e-5)
    np.testing.assert_allclose(rms["weight"][3:], np.broadcast_to(full[2:], (3, 2, 3, 3)), rtol=1e-5)


def test_a_layer_called_twice_counts_both_calls_and_unsupported_weights_are_named():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.up = nn.Linear(3, 3), nn.ConvTranspose1d(3, 2, 1)

        def forward(self, x):
            return self.up(self.shared(self.shared(x)).unsqueeze(-1))

    model = Twice()
    x = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    rms, skipped = torch_input_rms(model, torch_weights(model), (x,))
    with torch.no_grad():
        second = model.shared(torch.from_numpy(x)).double().numpy()
    both = np.concatenate([x.astype(np.float64), second])
    np.testing.assert_allclose(rms["shared.weight"][0], np.sqrt((both ** 2).mean(0)), rtol=1e-5)
    assert skipped == ["up.weight (ConvTranspose1d is not a Linear or Conv1d/Conv2d)"]


def test_onnx_rms_matches_the_torch_model_it_was_exported_from():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)).eval()
    x = np.random.default_rng(2).random((40, 1, 8, 8)).astype(np.float32)
    graph = export_onnx(model, (torch.from_numpy(x[:2]),))
    from_torch, _ = torch_input_rms(model, torch_weights(model), (x,))
    from_onnx, skipped = onnx_input_rms(graph, onnx_weights(graph), Dataset("x", (x,)))
    assert skipped == []
    by_size = {v.size: v for v in from_onnx.values()}
    for name, value in from_torch.items():
        np.testing.assert_allclose(by_size[value.size].ravel(), value.ravel(), rtol=1e-5, err_msg=name)
    linear = next(n for n, w in onnx_weights(graph).items() if w.ndim == 2)
    weight = onnx_weights(graph)[linear]
    assert np.broadcast_shapes(from_onnx[linear].shape, weight.shape) == weight.shape


def test_onnx_weights_read_through_a_transpose_are_named(tiny_onnx):
    import onnx
    from onnx import helper

    model = onnx.load(str(tiny_onnx))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.input[1] = "fc.weight.t"
    gemm.ClearField("attribute")
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("Transpose", ["fc.weight"], ["fc.weight.t"]))
    x = np.random.default_rng(3).random((8, 1, 8, 8)).astype(np.float32)
    rms, skipped = onnx_input_rms(model, onnx_weights(model), Dataset("x", (x,)))
    assert set(rms) == {"conv.weight"} and rms["conv.weight"].shape == (1, 1, 3, 3)
    assert skipped == ["fc.weight (not the direct weight of a MatMul/Gemm/Conv)"]


def test_onnx_chunks_shrink_to_keep_the_exposed_inputs_small_and_give_the_same_rms(tiny_onnx, monkeypatch):
    import onnx

    from workbench import activations

    model = onnx.load(str(tiny_onnx))
    data = Dataset("x", (np.random.default_rng(4).random((20, 1, 8, 8)).astype(np.float32),))
    whole, _ = onnx_input_rms(model, onnx_weights(model), data)
    batches = []
    from workbench import evaluate

    original = evaluate.feeds          # onnx_input_rms imports it when called: count the samples of each run
    monkeypatch.setattr(evaluate, "feeds", lambda s, d, a, b: batches.append(b - a) or original(s, d, a, b))
    monkeypatch.setattr(activations, "EXPOSED_BYTES", 3 * 4 * (64 + 8 * 36))   # 3 samples' conv + fc inputs
    chunked, _ = onnx_input_rms(model, onnx_weights(model), data)
    assert batches[0] == 1 and set(batches[1:-1]) == {3} and sum(batches) == 20
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6)
