"""ONNX LSTM and GRU nodes as nn.LSTM / nn.GRU layers, for workbench.onnx_torch: real, trainable layers named
after their ONNX weights, run by the "recurrent" op registered here.

ONNX stacks the gates of W, R and B as i, o, f, c (LSTM) and z, r, h (GRU); torch as i, f, g, o and r, z, n,
so the blocks are reordered. A "reverse" node runs a forward layer on the time-flipped sequence. What torch's
layers cannot compute is refused with the reason: activations other than the defaults, clip, input_forget,
peepholes, per-sample sequence lengths, and a GRU that applies its reset gate before the recurrent matmul
(linear_before_reset=0; torch's GRU is the =1 form, which is what torch exports).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workbench.errors import WorkbenchError
from workbench.onnx_ops import op

GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2)}   # torch's gate blocks, as positions in ONNX's order
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def recurrent_layer(kind: str, attrs: dict, w: np.ndarray, r: np.ndarray, b: np.ndarray | None) -> nn.Module:
    """The nn.LSTM / nn.GRU computing ONNX `kind` with weights W (dirs, gates*H, I), R (dirs, gates*H, H) and
    bias B (dirs, 2*gates*H) or none."""
    order = GATE_ORDER[kind]
    dirs, rows, inputs = w.shape
    hidden = rows // len(order)
    direction = attrs.get("direction", b"forward").decode()
    activations = [a.decode() for a in attrs.get("activations", [])]
    problems = [("clip" in attrs, "a clip on the cell values"),
                (attrs.get("input_forget", 0), "coupled input and forget gates (input_forget)"),
                (activations and activations != DEFAULT_ACTIVATIONS[kind] * dirs,
                 f"activations {', '.join(activations)}"),
                (kind == "GRU" and not attrs.get("linear_before_reset", 0),
                 "the reset gate applied before the recurrent weights (linear_before_reset=0)"),
                ((dirs == 2) != (direction == "bidirectional"), f"{dirs} weight directions for direction {direction}"),
                (attrs.get("layout", 0), "batch-first layout (which ONNX Runtime does not run either)")]
    if problem := next((why for found, why in problems if found), None):
        raise WorkbenchError(f"{problem} has no torch {kind} equivalent")
    layer = (nn.LSTM if kind == "LSTM" else nn.GRU)(inputs, hidden, bidirectional=dirs == 2)
    bias = np.zeros((dirs, 2 * rows), np.float32) if b is None else b

    def reordered(matrix: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([matrix[g * hidden:(g + 1) * hidden] for g in order]))

    with torch.no_grad():
        for d, suffix in enumerate(("", "_reverse")[:dirs]):
            for name, value in (("weight_ih", w[d]), ("weight_hh", r[d]), ("bias_ih", bias[d][:rows]),
                                ("bias_hh", bias[d][rows:])):
                getattr(layer, f"{name}_l0{suffix}").copy_(reordered(value))
    return layer


@op("recurrent")
def run_recurrent(attrs: dict, x: list, layer: nn.Module) -> torch.Tensor | tuple:
    """Y (seq, dirs, batch, H), Y_h (and Y_c) (dirs, batch, H), as ONNX lays them out."""
    data, h0, c0 = (list(x) + [None, None])[:3]
    lstm, reverse = isinstance(layer, nn.LSTM), attrs.get("reverse", False)
    state = h0
    if lstm and (h0 is not None or c0 is not None):
        like = h0 if h0 is not None else c0
        state = (torch.zeros_like(like) if h0 is None else h0, torch.zeros_like(like) if c0 is None else c0)
    y, hidden = layer(data.flip(0) if reverse else data, state)
    y = (y.flip(0) if reverse else y).reshape(y.shape[0], y.shape[1], 2 if layer.bidirectional else 1,
                                              layer.hidden_size)
    outputs = (y.transpose(1, 2), *(hidden if lstm else (hidden,)))[:attrs.get("_outputs", 3)]
    return outputs if len(outputs) > 1 else outputs[0]   # a node that names only Y gets a tensor
