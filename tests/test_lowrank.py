"""Low-rank factorization: SVD truncation behaves as the maths says, factorized layers compute what the
original did at full rank, the model really gets smaller, skipped layers say why, and the result goes
on through quantization."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.conftest import FAST_MEASURE
from workbench.data import digits_splits
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session
from workbench.lowrank import choose_rank, factorize_matrix, split_layer
from workbench.pipeline import run_pipeline
from workbench.pruning import prune_torch
from workbench.specs import LowRankSpec, PruneSpec, RunSpec
from workbench.stages import STAGE_RUNNERS, Context, Variant

EXAMPLE = (torch.zeros(2, 1, 8, 8),)


def _ctx() -> Context:
    return Context(RunSpec.from_dict({"model": "digits-cnn"}), digits_splits(), EXAMPLE, lambda f, msg: None,
                   lambda: False)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reconstruction_error_falls_with_rank_and_vanishes_at_full_rank():
    w = np.random.default_rng(0).normal(size=(12, 20)).astype(np.float32)
    errors = []
    for rank in range(1, 13):
        f = factorize_matrix(w, LowRankSpec(rank=rank))
        assert f.first.shape == (rank, 20) and f.second.shape == (12, rank)
        errors.append(np.linalg.norm(f.second @ f.first - w))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-4 * np.linalg.norm(w)
    assert factorize_matrix(w, LowRankSpec(rank=50)).rank == 12   # capped at min(out, in)


def test_energy_picks_the_smallest_rank_holding_that_share_of_squared_singular_values():
    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.normal(size=(6, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(8, 4)))
    w = (u * [4.0, 2.0, 1.0, 0.5]) @ v.T        # s^2 = 16, 4, 1, 0.25: cumulative 75.3%, 94.1%, 98.8%, 100%
    expected = {0.7: 1, 0.76: 2, 0.9: 2, 0.95: 3, 0.99: 4, 1.0: 4}
    for energy, rank in expected.items():
        f = factorize_matrix(w.astype(np.float32), LowRankSpec(energy=energy))
        assert f.rank == rank, energy
    assert factorize_matrix(w.astype(np.float32), LowRankSpec(energy=0.9)).energy == pytest.approx(20 / 21.25)
    assert choose_rank(np.zeros(3), LowRankSpec()) == 1


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(3, 5, (3, 2), dilation=2),
                                  nn.Conv1d(4, 3, 5, padding=2, bias=False)])
def test_conv_factorization_at_full_rank_computes_the_original_output(conv):
    w = conv.weight.detach().numpy()
    f = factorize_matrix(w.reshape(w.shape[0], -1), LowRankSpec(rank=10_000))
    pair = split_layer(conv, f)
    x = torch.randn(2, conv.in_channels, *([9] * (conv.weight.dim() - 2)))
    with torch.no_grad():
        np.testing.assert_allclose(pair(x).numpy(), conv(x).numpy(), atol=1e-5)
    assert pair[0].kernel_size == conv.kernel_size and pair[1].kernel_size == (1,) * len(conv.kernel_size)
    assert (pair[1].bias is None) == (conv.bias is None) and pair[0].bias is None


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(1, 1, 3, padding=1, groups=1)
        self.expand = nn.Conv2d(1, 32, 3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.mix = nn.Conv2d(32, 64, 3, padding=1)
        self.head = nn.Linear(64 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(torch.relu(self.depthwise(torch.relu(self.expand(self.dw(x))))))
        return self.head(x.flatten(1))


def test_params_drop_skipped_layers_say_why_and_masks_of_factorized_layers_go():
    module = Depthwise()
    masks = prune_torch(module, PruneSpec(sparsity=0.5))
    out = STAGE_RUNNERS["lowrank"](Variant(module=module, masks=masks), LowRankSpec(rank=8), _ctx())
    assert [r["layer"] for r in out.history] == ["mix"]
    row = out.history[0]
    assert (row["rank"], row["full_rank"], row["params_before"], row["params_after"]) == (8, 64, 64 * 288,
                                                                                        8 * (288 + 64))
    assert _params(out.module) < _params(module) and out.structured
    skipped = next(n for n in out.notes if n.startswith("left whole"))
    for reason in ("expand (rank 8 of 9 saves no weights", "depthwise (grouped/depthwise conv (groups=32)",
                   "head (classifier", "dw (rank 1 of 1 saves no weights"):
        assert reason in skipped, reason
    assert "mix.weight" not in out.masks and "head.weight" in out.masks and any("dropped" in n for n in out.notes)
    with torch.no_grad():
        assert out.module(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert module.mix.weight.shape == (64, 32, 3, 3)      # the input variant is untouched


def test_onnx_matmul_and_gemm_weights_are_factorized_in_the_graph():
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(64, 48)).astype(np.float32), rng.normal(size=48).astype(np.float32)
    w2, w3 = rng.normal(size=(32, 48)).astype(np.float32), rng.normal(size=(10, 32)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["input"], ["x"]),
             helper.make_node("MatMul", ["x", "w1"], ["h1"]), helper.make_node("Add", ["h1", "b1"], ["a1"]),
             helper.make_node("Gemm", ["a1", "w2"], ["h2"], transB=1, alpha=0.5),
             helper.make_node("Gemm", ["h2", "w3"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"),
                                                                          (w3, "w3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = STAGE_RUNNERS["lowrank"](Variant(onnx_model=model), LowRankSpec(rank=4), _ctx())
    assert [(r["layer"], r["rank"]) for r in out.history] == [("w1", 4), ("w2", 4)]
    x = rng.random((5, 1, 8, 8)).astype(np.float32)

    def low(w):
        u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
        return (u[:, :4] * s[:4]) @ vt[:4]

    h = low(w1.T).T
    expected = ((x.reshape(5, 64) @ h + b1) @ (0.5 * low(w2)).T) @ w3.T
    (got,) = make_session(out.onnx_model).run(None, {"input": x})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
    assert {t.name for t in out.onnx_model.graph.initializer}.isdisjoint({"w1", "w2"})
    assert "w3 (classifier" in out.notes[1]


def test_refusals_name_the_problem(tiny_onnx):
    with pytest.raises(WorkbenchError, match=r"Conv factorization needs nn.Conv modules \(load safetensors"):
        STAGE_RUNNERS["lowrank"](Variant(onnx_model=onnx.load(tiny_onnx)), LowRankSpec(), _ctx())
    with pytest.raises(WorkbenchError, match="put lowrank before quantize"):
        STAGE_RUNNERS["lowrank"](Variant(onnx_model=onnx.load(tiny_onnx), quant_method="static"), LowRankSpec(),
                                 _ctx())
    layers = r"\(layers: dw, expand, depthwise, mix, head\)$"
    with pytest.raises(WorkbenchError, match=r"^lowrank exclude: 'mixer' matches no layer " + layers):
        STAGE_RUNNERS["lowrank"](Variant(module=Depthwise()), LowRankSpec(exclude=("mix", "mixer")), _ctx())


def test_pipeline_lowrank_with_finetune_then_static_int8(tmp_path):
    spec = RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE, "stages": [
        {"lowrank": {"energy": 0.9, "finetune": {"epochs": 3, "lr": 0.001}}}, {"quantize": {"method": "static"}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    factorized, quantized = report.variants
    base = report.baseline.measurement
    assert factorized.measurement.size.params < 0.6 * base.size.params
    claims = {c.aspect: c for c in factorized.claims}
    assert claims["file size"].kind == "real" and claims["file size"].ratio > 1.6
    assert factorized.facts.structured and any("fine-tuned 3 epoch(s)" in n for n in factorized.notes)
    assert factorized.measurement.metrics["accuracy"] > base.metrics["accuracy"] - 0.03
    assert quantized.measurement.coverage.quantized == 5          # both factors of fc1 and fc2, and fc3
    assert quantized.measurement.metrics["accuracy"] > factorized.measurement.metrics["accuracy"] - 0.02
    assert (tmp_path / "model.onnx").stat().st_size < base.size.file_bytes / 5


def test_per_layer_bits_for_a_factorized_layer_apply_to_both_factors(tmp_path):
    spec = RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE, "stages": [
        {"lowrank": {"energy": 0.9}},
        {"quantize": {"method": "weight_only", "weight_bits": 8, "overrides": {"fc1": 4, "fc2": 2}}}]})
    run_pipeline(spec, out_dir=tmp_path)
    nodes = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    bits = {n.input[1].rsplit(".", 1)[0]: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
            for n in nodes}
    assert {k.split("_")[0]: v for k, v in bits.items()} == {"fc1.0": 4, "fc1.1": 4, "fc2.0": 2, "fc2.1": 2, "fc3": 8}
