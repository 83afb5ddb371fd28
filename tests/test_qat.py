"""Quantization-aware training: the QDQ file ONNX Runtime runs is the model torch trained (integer
weights, at most 2^bits values per channel), training beats rounding after the fact at 2 bits, and
pruned weights stay zero."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from tests.conftest import FAST_MEASURE
from workbench.data import Dataset, digits_splits
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session, predict, score, torch_predict
from workbench.export import export_onnx
from workbench.pipeline import run_pipeline
from workbench.pruning import prune_torch, torch_weights
from workbench.qat import attach, detach, observe, to_qdq
from workbench.quantization import fake_quantize_weight
from workbench.specs import PruneSpec, QATSpec, RunSpec
from workbench.stages import STAGE_RUNNERS, Context, Variant
from workbench.zoo import load_sample

EXAMPLE = (torch.zeros(2, 1, 8, 8),)


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


def _ctx(splits) -> Context:
    return Context(RunSpec.from_dict({"model": "digits-mlp"}), splits, EXAMPLE, lambda f, msg: None, lambda: False)


def _accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    return score(predict(make_session(model), data), data.labels)["accuracy"]


def _dq_weights(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, int | None]]:
    """Integer weight codes behind each DequantizeLinear of a weight, with the channel axis."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].endswith(".weight_quantized"):
            axis = next((a.i for a in node.attribute if a.name == "axis"), None)
            out[node.output[0]] = (numpy_helper.to_array(inits[node.input[0]]).astype(np.int8), axis)
    return out


def _exact_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """ORT fuses DequantizeLinear -> MatMul into MatMulNBits, which by default rounds activations to
    int8; accuracy level 0 keeps them float, so the file's own values are what is compared."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class SeqLinear(nn.Module):
    """Linear layers on (N, T, C) inputs: the exporter turns their weights into renamed, transposed
    MatMul initializers, so the QDQ rewrite must find them by value."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x.reshape(x.shape[0], 8, 8)))).mean(1)


@pytest.mark.parametrize(("model", "bits", "act"), [("digits-cnn", 3, None), ("seq", 2, None), ("digits-mlp", 4, 8)])
def test_qdq_export_runs_in_ort_and_matches_the_torch_fake_quant_model(splits, model, bits, act):
    module = SeqLinear() if model == "seq" else load_sample(model)
    spec = QATSpec(weight_bits=bits, activation_bits=act)
    layers, _ = attach(module, spec)
    if act:
        observe(module, layers, splits.calib)
    x = splits.test.inputs[0][:64]
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(x)).numpy()
    codes = detach(layers)
    int4 = act is None
    qdq, missing = to_qdq(export_onnx(module, EXAMPLE), codes, int4)
    assert missing == [] and len(_dq_weights(qdq)) == len(codes)
    got = _exact_session(qdq).run(None, {"input": x})[0]
    if act is None:   # weights only: ORT dequantizes exactly what torch computed with
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        stored = {t.data_type for t in qdq.graph.initializer if t.name.endswith(".weight_quantized")}
        assert stored == {onnx.TensorProto.INT4}
    else:             # int8 kernels round activations the same way, up to a step at exact ties
        assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()
        assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.98


def test_short_qat_beats_post_training_rounding_at_2_bits_with_at_most_4_values_per_channel(splits):
    rounded = load_sample("digits-mlp")   # post-training: the "fake" method's rounding, per output channel
    with torch.no_grad():
        for w in torch_weights(rounded).values():
            w.copy_(torch.from_numpy(fake_quantize_weight(w.numpy(), 2, axis=0)))
    ptq = score(torch_predict(rounded, splits.test), splits.test.labels)["accuracy"]
    out = STAGE_RUNNERS["qat"](Variant(module=load_sample("digits-mlp")), QATSpec(weight_bits=2, epochs=8, lr=1e-3),
                               _ctx(splits))
    qat = _accuracy(out.onnx_model, splits.test)
    assert qat > 0.9 and qat > ptq + 0.2
    assert out.history[0]["fake_quant_accuracy_after"] == pytest.approx(qat, abs=0.01)  # the file is what trained
    codes = _dq_weights(out.onnx_model)
    assert len(codes) == 3
    for q, axis in codes.values():
        assert np.abs(q).max() <= 1   # symmetric 2-bit: -1, 0, 1
        rows = np.moveaxis(q, axis, 0).reshape(q.shape[axis], -1)
        assert max(len(np.unique(row)) for row in rows) <= 2 ** 2
    assert (out.quant_method, out.simulated_quant, out.storage_bits) == ("qat", False, 2)
    assert any("INT4" in n for n in out.notes) and any("DequantizeLinear" in n for n in out.notes)


def test_pruned_weights_stay_zero_through_qat(splits, tiny_onnx):
    module = load_sample("digits-mlp")
    masks = prune_torch(module, PruneSpec(sparsity=0.8))
    out = STAGE_RUNNERS["qat"](Variant(module=module, masks=masks), QATSpec(weight_bits=4, epochs=1, lr=1e-3),
                               _ctx(splits))
    codes = _dq_weights(out.onnx_model)
    for name, mask in masks.items():
        q, _ = codes[name]   # Gemm weights keep torch's name and layout
        assert not q[mask == 0].any() and q[mask == 1].any()
    assert out.masks.keys() == masks.keys() and any("pruning masks kept" in n for n in out.notes)
    with pytest.raises(WorkbenchError, match="qat needs a torch model; put it before quantize"):
        STAGE_RUNNERS["qat"](Variant(onnx_model=onnx.load(tiny_onnx)), QATSpec(), _ctx(splits))


def test_pipeline_claims_a_real_smaller_file_with_int8_kernels(tmp_path):
    spec = RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE,
                              "stages": [{"qat": {"weight_bits": 4, "activation_bits": 8, "epochs": 1}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    final = report.final
    claims = {c.aspect: c for c in final.claims}
    assert claims["file size"].kind == "real" and claims["file size"].ratio > 3   # int8 containers: ~3.1x
    assert "only 4 bits" in claims["file size"].reason and claims["accuracy"].kind == "real"
    assert final.facts.quant_method == "qat" and not final.facts.simulated_quant
    assert final.measurement.coverage.quantized == 3                               # QDQ on both inputs
    assert any("3 QGemm" in n for n in final.notes)                                 # what ORT actually runs
    saved = onnx.load(str(tmp_path / "model.onnx"))
    assert {t.data_type for t in saved.graph.initializer if t.name.endswith(".weight_quantized")} == {
        onnx.TensorProto.INT8}
