"""torch -> ONNX, with a dynamic batch axis and stable names ("input", "logits"); and torch -> a torch.export
archive (`export_program`), the compressed model for PyTorch users.

Uses the torch.export-based exporter (`dynamo=True`, needs onnxscript); TorchScript modules, which
it cannot trace, go through the legacy TorchScript exporter. Export never changes the module.
When both fail, the error says whether the module itself rejects the example inputs (a model made for
other data) or only the export failed.

Both exporters fold the transpose of a Linear applied to a 3-D input (a transformer's tokens) into a
new initializer (`val_<n>`, `onnx::MatMul_<n>`); those are renamed back to the parameter they hold (a transposed
copy), so layer names in recipes (quantize overrides, excludes), notes and tables stay the torch names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from workbench.errors import WorkbenchError
from workbench.settings import get_settings

log = logging.getLogger(__name__)
OPSET = 18
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def input_names(count: int) -> list[str]:
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings meant for developers; keep the user's terminal clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> onnx.ModelProto:
    """Export `module` (eval mode) for inputs like `example` (batch on axis 0)."""
    module = module.eval()
    names = input_names(len(example))
    # torch.export makes a compile-cache folder (default $TMPDIR/torchinductor_<user>): keep it in the data dir
    os.environ.setdefault(INDUCTOR_CACHE_ENV, str(get_settings().home / "cache" / "torchinductor"))
    with _quiet(), torch.no_grad():
        if not isinstance(module, torch.jit.ScriptModule):
            try:
                return without_debug_info(restore_parameter_names(_export_dynamo(module, example, names), module))
            except Exception as exc:  # fall back to the legacy exporter, which handles more Python
                log.info("dynamo export failed (%s); trying the TorchScript exporter", str(exc).splitlines()[0])
        try:
            return without_debug_info(restore_parameter_names(_export_legacy(module, example, names), module))
        except Exception as exc:
            export_error = _reason(exc)
        try:
            module(*example)
        except Exception as exc:  # the model cannot run on this data at all: say that, not "export failed"
            shapes = " and ".join(str(tuple(x.shape[1:])) for x in example)
            raise WorkbenchError(f"the model does not accept samples of shape {shapes} ({_reason(exc)})") from None
        raise WorkbenchError(f"export to ONNX failed: {export_error}")


def export_program(module: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> bytes:
    """`module` (eval mode) as a torch.export archive (.pt2) with the batch axis dynamic from 1: the compressed
    torch model, loadable with `torch.export.load(path).module()` without the model's Python code.
    Raises WorkbenchError with the reason when torch.export cannot trace it (a TorchScript module, say)."""
    batch = torch.export.Dim("batch", min=1)
    os.environ.setdefault(INDUCTOR_CACHE_ENV, str(get_settings().home / "cache" / "torchinductor"))
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(module.eval(), tuple(example),
                                          dynamic_shapes=tuple({0: batch} for _ in example))
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
    except Exception as exc:
        raise WorkbenchError(f"torch.export failed: {_reason(exc)}") from None
    return buffer.getvalue()


def _reason(exc: BaseException) -> str:
    """The line that says what went wrong. TorchScript errors open with a generic line and a
    traceback of the scripted code, and put the actual error last."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
    return line[:200]


def _export_dynamo(module: torch.nn.Module, example: tuple, names: list[str]) -> onnx.ModelProto:
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        module, example, dynamo=True, opset_version=OPSET, input_names=names, output_names=["logits"],
        dynamic_shapes=tuple({0: batch} for _ in example), verbose=False,
    )
    return program.model_proto


def _digest(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def without_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` without the exporter's per-node debug records (stack traces, FX node names, module paths in
    metadata_props and doc strings): about 60 KB on a 460 KB transformer, which a file-size ratio against an
    uploaded file without them would count as the compression's cost. Runs as before; nothing reads them."""
    nodes = list(model.graph.node)
    while nodes:
        node = nodes.pop()
        del node.metadata_props[:]
        node.doc_string = ""
        nodes += [n for a in node.attribute for g in (*([a.g] if a.HasField("g") else []), *a.graphs) for n in g.node]
    return model


def restore_parameter_names(model: onnx.ModelProto, module: torch.nn.Module) -> onnx.ModelProto:
    """`model`, its initializers that hold an exact (possibly transposed) copy of one 2-D parameter of `module`
    renamed to that parameter's name where the name is free (a copy two parameters share stays as it is)."""
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return model   # a subgraph may read an initializer by name: leave the names alone
    taken = {t.name for t in graph.initializer} | {n for node in graph.node for n in (*node.input, *node.output)}
    owners: dict[tuple, set[str]] = {}
    for name, param in module.named_parameters():
        if param.ndim == 2 and name not in taken:
            array = param.detach().cpu().numpy()
            for key in {_digest(array), _digest(array.T)}:
                owners.setdefault(key, set()).add(name)
    renames: dict[str, str] = {}
    for tensor in graph.initializer:
        names = owners.get(_digest(numpy_helper.to_array(tensor))) if len(tensor.dims) == 2 else None
        if names and len(names) == 1 and next(iter(names)) not in renames.values():
            renames[tensor.name] = next(iter(names))
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    return model


def _export_legacy(module: torch.nn.Module, example: tuple, names: list[str]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    axes = {n: {0: "batch"} for n in [*names, "logits"]}
    torch.onnx.export(module, example, buffer, dynamo=False, opset_version=OPSET, input_names=names,
                      output_names=["logits"], dynamic_axes=axes)
    return onnx.load_from_string(buffer.getvalue())
