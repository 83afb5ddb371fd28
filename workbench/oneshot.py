"""One-shot accuracy for previews: a model with some of its weights replaced, scored on the test split sample by
sample (which samples it gets right, so a preview can pair them with the uncompressed model's), the model left
as it was. A torch module gets the weights swapped into its parameters and back; an ONNX graph is
copied with the initializers replaced and run by ONNX Runtime, as a run would measure it."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from workbench.data import Dataset
from workbench.evaluate import answers


def oneshot_answers(model: Any, weights: dict[str, np.ndarray], test: Dataset) -> np.ndarray:
    """Per test sample, whether `model` (a torch module or an onnx.ModelProto) with `weights` (parameter or
    initializer name -> array) in place of its own gets it right; its mean is the one-shot accuracy."""
    if isinstance(model, onnx.ModelProto):
        return _onnx_answers(model, weights, test)
    return _torch_answers(model, weights, test)


def _torch_answers(module, weights: dict[str, np.ndarray], test: Dataset) -> np.ndarray:
    import torch

    params = dict(module.named_parameters())
    saved = {n: params[n].detach().clone() for n in weights}
    try:
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(torch.from_numpy(w.astype(np.float32)))
            logits = module(*(torch.from_numpy(x) for x in test.inputs))
        return answers(logits.numpy(), test.labels)
    finally:
        with torch.no_grad():
            for n, w in saved.items():
                params[n].copy_(w)


def _onnx_answers(model: onnx.ModelProto, weights: dict[str, np.ndarray], test: Dataset) -> np.ndarray:
    from workbench.evaluate import make_session, predict

    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    for tensor in changed.graph.initializer:
        if tensor.name in weights:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
            tensor.CopyFrom(numpy_helper.from_array(np.asarray(weights[tensor.name], dtype=dtype), tensor.name))
    return answers(predict(make_session(changed), test), test.labels)
