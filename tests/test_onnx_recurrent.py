"""ONNX LSTM and GRU nodes convert to nn.LSTM / nn.GRU layers that compute what ONNX Runtime computes, in every
direction, with or without initial states; what torch's layers cannot compute is refused with the reason."""

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.architectures import random_init
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session
from workbench.export import export_onnx
from workbench.onnx_torch import convert

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 1, 8, 8), dtype=np.float32)


class Rows(nn.Module):
    """The rows of a digit as a sequence through a recurrent layer, classified from the last step."""

    def __init__(self, kind: type[nn.Module], bidirectional: bool) -> None:
        super().__init__()
        self.rnn = kind(8, 16, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(32 if bidirectional else 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(x.reshape(x.shape[0], 8, 8))[0][:, -1])


def _export(module: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(X[:2]),), buffer, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("bidirectional,exporter", [(False, "legacy"), (True, "legacy"), (True, "dynamo")])
def test_exported_lstm_and_gru_become_their_torch_layers_and_train(kind, bidirectional, exporter):
    module = random_init(Rows(kind, bidirectional))
    model = _export(module) if exporter == "legacy" else export_onnx(module, (torch.from_numpy(X[:2]),))
    assert kind.__name__ in {n.op_type for n in model.graph.node}
    conversion = convert(model, [X])
    assert conversion.max_error < 1e-5 and conversion.fidelity().startswith("1 Conv/Linear layer;")   # + the RNN
    (layer,) = [m for m in conversion.module.modules() if isinstance(m, kind)]
    assert layer.bidirectional == bidirectional
    x = RNG.standard_normal((3, 1, 8, 8), dtype=np.float32)   # another batch size than the check's
    with torch.no_grad():
        got = conversion.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, make_session(model).run(None, {"input": x})[0], atol=1e-5, rtol=1e-4)
    before = layer.weight_hh_l0.detach().clone()
    loss = conversion.module(torch.from_numpy(X)).square().mean()
    loss.backward()
    torch.optim.SGD(conversion.module.parameters(), lr=0.1).step()
    assert not torch.equal(before, layer.weight_hh_l0)          # a real, trainable layer


def _graph(op: str, **attrs) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """One recurrent node on 5 steps of 4 features, hidden 6, random weights and initial states; inputs and
    outputs batch-first (as the workbench feeds samples), transposed to ONNX's sequence-first layout around it."""
    gates, dirs = (4 if op == "LSTM" else 3), (2 if attrs.get("direction") == "bidirectional" else 1)
    weights = {"W": (dirs, gates * 6, 4), "R": (dirs, gates * 6, 6), "B": (dirs, 2 * gates * 6)}
    inits = [numpy_helper.from_array(RNG.standard_normal(s).astype(np.float32), n) for n, s in weights.items()]
    states = ["h0"] + (["c0"] if op == "LSTM" else [])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 4])] + [
        helper.make_tensor_value_info(s, TensorProto.FLOAT, ["b", dirs, 6]) for s in states]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])] + [
        helper.make_node("Transpose", [s], [f"{s}t"], perm=[1, 0, 2]) for s in states]
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    nodes.append(helper.make_node(op, ["xt", "W", "R", "B", "", *(f"{s}t" for s in states)],
                                  [f"{o}t" for o in outputs], hidden_size=6, **attrs))
    nodes += [helper.make_node("Transpose", [f"{o}t"], [o], perm=[2, 0, 1, 3] if o == "y" else [1, 0, 2])
              for o in outputs]
    graph = helper.make_graph(nodes, "rnn", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                     for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [RNG.standard_normal((3, 5, 4)).astype(np.float32)]
    return model, feeds + [RNG.standard_normal((3, dirs, 6)).astype(np.float32) for _ in states]


@pytest.mark.parametrize("op,attrs", [
    ("LSTM", {"direction": "reverse"}), ("LSTM", {"direction": "bidirectional"}),
    ("GRU", {"direction": "reverse", "linear_before_reset": 1}),
    ("GRU", {"direction": "bidirectional", "linear_before_reset": 1})])
def test_every_output_direction_and_initial_state_matches_onnx_runtime(op, attrs):
    model, feeds = _graph(op, **attrs)
    conversion = convert(model, feeds)
    want = make_session(model).run(None, {i.name: v for i, v in zip(model.graph.input, feeds, strict=True)})
    with torch.no_grad():
        got = conversion.module(*(torch.from_numpy(v) for v in feeds))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("op,attrs,why", [
    ("GRU", {}, "the reset gate applied before the recurrent weights (linear_before_reset=0) has no torch GRU"),
    ("LSTM", {"clip": 3.0}, "a clip on the cell values has no torch LSTM equivalent"),
    ("LSTM", {"activations": ["Relu", "Tanh", "Tanh"]}, "activations Relu, Tanh, Tanh has no torch LSTM")])
def test_what_torch_layers_cannot_compute_is_refused_with_the_reason(op, attrs, why):
    model, feeds = _graph(op, **attrs)
    with pytest.raises(WorkbenchError, match=why.replace("(", r"\(").replace(")", r"\)")):
        convert(model, feeds)
