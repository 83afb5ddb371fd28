"""Load models without running user code by accident, and describe them layer by layer.

Sources: a sample by name; user files: ONNX (any number of inputs, any dtype), `torch.export`
programs (.pt2), TorchScript (.pt/.ts) and safetensors weights for a built-in architecture.
Nothing is ever unpickled: .pt2 archives are checked for pickled objects first and loaded with
`TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`; ONNX external data must stay inside the model's folder, and an
ONNX model must open in ONNX Runtime. A user model must have parameters, all of them finite.
Any failure to read a user file is one `WorkbenchError` line naming it, never a traceback.

`secure_process()` is what every entry point (app, CLI, worker) calls first: it switches ONNX Runtime's
telemetry off before ONNX Runtime is imported, and refuses to run in an environment that switches
torch's weights-only loading off. This module imports onnx and torch only when a model is loaded, so
that call stays cheap.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.specs import MODEL_SUFFIXES, ModelRef

if TYPE_CHECKING:
    import onnx
    from torch import nn

log = logging.getLogger(__name__)
ONNX_MAX_BYTES = 2 * 1024**3
UNSAFE_LOAD_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"   # torch then unpickles arbitrary objects
# ONNX Runtime's official Linux/macOS builds (1DS SDK) collect and upload usage events unless this is "1"
# when it is imported; it keeps an event cache in ~/.cache/Microsoft/DeveloperTools and a file in $TMPDIR.
ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"
_ENV_LOCK = threading.Lock()   # os.environ is process-wide: one forced-weights-only load at a time


def secure_process() -> None:
    """Switch ONNX Runtime's telemetry off (child processes inherit it) and refuse to run when the
    environment turns torch's weights-only loading off for every torch.load."""
    if os.environ.get(ORT_TELEMETRY_ENV) != "1" and "onnxruntime" in sys.modules:  # too late: it has decided
        log.warning("onnxruntime was imported before %s=1 was set; its telemetry may be on", ORT_TELEMETRY_ENV)
    os.environ[ORT_TELEMETRY_ENV] = "1"
    value = os.environ.get(UNSAFE_LOAD_ENV, "")
    if value.strip().lower() not in ("", "0", "n", "no", "false", "off"):
        raise WorkbenchError(f"{UNSAFE_LOAD_ENV}={value} is set: it lets torch unpickle arbitrary code from model "
                             f"files, so the workbench refuses to start; unset it")


@dataclass
class LoadedModel:
    """A model ready for compression: a trainable torch module, an ONNX graph, or both."""

    label: str
    kind: str                              # "torch" or "onnx"
    module: Any = None                     # torch.nn.Module (eval mode) for torch sources
    onnx_model: onnx.ModelProto | None = None
    source: Path | None = None
    file_bytes: int | None = None
    input_shape: tuple[int, ...] | None = None   # per-sample shape when known (for export)

    def input_names(self) -> list[str] | None:
        """The ONNX graph inputs that are fed data (not initializers); None for torch models."""
        if self.onnx_model is None:
            return None
        inits = {t.name for t in self.onnx_model.graph.initializer}
        return [i.name for i in self.onnx_model.graph.input if i.name not in inits]


def load_model(ref: ModelRef) -> LoadedModel:
    if ref.sample is not None:
        return _load_sample(ref.sample)
    path = Path(ref.path or "")
    if not path.is_file():
        raise WorkbenchError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise WorkbenchError(f"{path.name}: the file is empty")
    loaders = {".onnx": _load_onnx, ".pt2": _load_pt2, ".pt": _load_torchscript, ".ts": _load_torchscript}
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            loaded = _load_safetensors(path, ref.arch or "")
        elif suffix in loaders:
            loaded = loaders[suffix](path)
        else:
            raise WorkbenchError(f"{path.name}: unsupported model format '{suffix}'")
        if loaded.module is not None:
            _check_module(loaded.module, path.name)
    except WorkbenchError:
        raise
    except Exception as exc:  # an odd file no check above foresaw: still one line naming it
        log.debug("loading %s failed", path, exc_info=True)
        raise WorkbenchError(f"{path.name}: could not be loaded ({type(exc).__name__}: {_first_line(exc)})") from None
    if ref.input_shape:
        loaded.input_shape = tuple(ref.input_shape)
    return loaded


def _load_sample(name: str) -> LoadedModel:
    if Path(name).suffix:  # a file name that is not a model format, e.g. a pickle named .pth
        raise WorkbenchError(f"{name}: unsupported model file type '{Path(name).suffix}' "
                             f"(supported: {', '.join(MODEL_SUFFIXES)})")
    from workbench import zoo
    from workbench.settings import get_settings

    if name not in zoo.ARCHITECTURES:
        raise WorkbenchError(f"{name}: no such sample model (samples: {', '.join(zoo.sample_names())})")
    module = zoo.load_sample(name)
    weights = get_settings().samples_dir / f"{name}.safetensors"
    return LoadedModel(name, "torch", module=module, source=weights, file_bytes=weights.stat().st_size,
                       input_shape=(1, 8, 8))


def _load_safetensors(path: Path, arch: str) -> LoadedModel:
    from workbench import zoo

    module = zoo.load_weights(zoo.build(arch), path, path.name)
    return LoadedModel(path.name, "torch", module=module, source=path, file_bytes=path.stat().st_size,
                       input_shape=(1, 8, 8) if arch in zoo.ARCHITECTURES else None)


def _load_onnx(path: Path) -> LoadedModel:
    import onnx

    from workbench.evaluate import make_session

    if path.stat().st_size > ONNX_MAX_BYTES:
        raise WorkbenchError(f"{path.name}: larger than 2 GB; only single-file models up to 2 GB are supported")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends: the file is not ONNX
        raise WorkbenchError(f"{path.name}: not a valid ONNX file ({_first_line(exc)})") from None
    if not model.graph.node:
        raise WorkbenchError(f"{path.name}: not a valid ONNX file (the graph has no nodes)")
    _check_external_data(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise WorkbenchError(f"{path.name}: invalid ONNX model ({_first_line(exc)})") from None
    _check_onnx_weights(model, path.name)
    make_session(path)  # ops ONNX Runtime has no kernel for fail here, naming the file, not at the first run
    return LoadedModel(path.name, "onnx", onnx_model=model, source=path, file_bytes=path.stat().st_size)


def _check_onnx_weights(model: onnx.ModelProto, name: str) -> None:
    """A model to compress has parameters, and every float one is finite."""
    import numpy as np
    from onnx import numpy_helper

    if not model.graph.initializer:
        raise WorkbenchError(f"{name}: the model has no parameters (no initializers): nothing to compress")
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise WorkbenchError(f"{name}: NaN or infinite values in {tensor.name}")


def _check_module(module: Any, name: str) -> None:
    """The torch counterpart of `_check_onnx_weights`, over parameters and buffers."""
    import torch

    tensors = dict(module.named_parameters())
    if not tensors:
        raise WorkbenchError(f"{name}: the model has no parameters: nothing to compress")
    for key, value in [*tensors.items(), *module.named_buffers()]:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WorkbenchError(f"{name}: NaN or infinite values in {key}")


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External tensor data must be a relative path inside the model's own folder."""
    import onnx

    folder = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(folder):
            raise WorkbenchError(f"{path.name}: external data '{location}' points outside the model's folder")
        if not target.is_file():
            raise WorkbenchError(f"{path.name}: external data file '{location}' is missing")


@contextlib.contextmanager
def _weights_only_loads():
    """Force every torch.load inside (including torch.export's own) to refuse pickled code. Held under a
    lock: with two loads at once (app sessions), the first to finish would otherwise unset it for both."""
    with _ENV_LOCK:
        old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _check_pt2_archive(path: Path) -> None:
    """Reject archives holding pickled objects: custom/opaque constants, and weights or constants stored
    with `use_pickle`, which torch.export would hand to torch.load."""
    if not zipfile.is_zipfile(path):
        raise WorkbenchError(f"{path.name}: not a torch.export archive (.pt2 files are zip archives)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any("/models/" in n and n.endswith(".json") for n in names):
            raise WorkbenchError(f"{path.name}: not a torch.export archive (no exported program inside)")
        for name in names:
            if not name.endswith(("_constants_config.json", "_weights_config.json")):
                continue
            try:
                config = json.loads(archive.read(name)).get("config", {})
                entries = [(str(c.get("path_name", "")), bool(c.get("use_pickle"))) for c in config.values()]
            except (ValueError, AttributeError) as exc:
                raise WorkbenchError(f"{path.name}: unreadable archive member {name} ({_first_line(exc)})") from None
            constants = name.endswith("_constants_config.json")
            if any(pickled or (constants and not path_name.startswith("tensor_")) for path_name, pickled in entries):
                raise WorkbenchError(f"{path.name}: holds pickled Python objects; refusing to load them")


def _load_pt2(path: Path) -> LoadedModel:
    _check_pt2_archive(path)
    import torch  # after the check: a refused file costs no torch import

    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise WorkbenchError(f"{path.name}: could not load the torch.export program ({_first_line(exc)})") from None
    if (batch := _static_batch(program)) is not None:
        raise WorkbenchError(f"{path.name}: exported for batch size {batch} only, and the workbench runs models on "
                             "other batch sizes (evaluation, latency at batch 1 and 256): export it with a dynamic "
                             "batch, torch.export.export(model, (x,), "
                             "dynamic_shapes=({0: torch.export.Dim('batch')},))")
    if _training_mode_ops(program):
        raise WorkbenchError(f"{path.name}: exported in training mode (BatchNorm normalizes each batch with its own "
                             "statistics, dropout drops), so its outputs depend on the batch: call model.eval() "
                             "before torch.export.export")
    module = trainable_program(program.module())
    shape = None
    args = program.example_inputs[0] if program.example_inputs else ()
    if len(args) == 1 and hasattr(args[0], "shape"):
        shape = tuple(args[0].shape[1:])
    return LoadedModel(path.name, "torch", module=module, source=path, file_bytes=path.stat().st_size,
                       input_shape=shape)


def _static_batch(program: Any) -> int | None:
    """The batch size a torch.export program was traced for when its first input's batch axis is a plain
    int (not symbolic), else None."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in inputs else None
        if value is not None and getattr(value, "dim", lambda: 0)() > 0:
            first = value.shape[0]
            return first if isinstance(first, int) else None
    return None


def _training_mode_ops(program: Any) -> bool:
    """Whether the traced graph normalizes with batch statistics or applies dropout (an export in train mode)."""
    for node in program.graph.nodes:
        name = str(node.target) if node.op == "call_function" else ""
        if name.startswith("aten.batch_norm") and len(node.args) > 5 and node.args[5] is True:
            return True
        if name.startswith(("aten._native_batch_norm_legit.", "aten._native_batch_norm_legit_functional")):
            return True
        if name.startswith(("aten.dropout", "aten.native_dropout")) and True in node.args[1:]:
            return True
    return False


def trainable_program(module: nn.Module) -> nn.Module:
    """`ExportedProgram.module()` replaces the module's train() and eval() with methods that raise, and
    torch 2.13 no longer ships the helper that allowed them (it moved to torchao). Put nn.Module's own back:
    the mode flag then switches as the workbench expects (export, evaluation, fine-tuning), while the traced
    graph keeps the mode it was exported in: BatchNorm and dropout behave as they did at export, typically
    eval (running statistics, no dropout), also while fine-tuning."""
    for name in ("train", "eval"):
        vars(module).pop(name, None)
    return module


EXPORTED, SCRIPTED = "a torch.export program (.pt2)", "a TorchScript model (.pt/.ts)"
# what edits nn.Linear/Conv modules, by key (a stage kind, or a part of one): a traced model is converted first
LAYER_EDITS = {
    "structured": "structured pruning",
    "distill": "distillation (the student is the teacher with channels removed)",
    "lowrank": "low-rank factorization",
    "qat": "quantization-aware training",
    "transfer": "transfer (a new head replaces the last Linear)",
    "reconstruct": "reconstruction (solving each layer's kept weights; an ONNX export of the model takes it)",
    "wanda": "wanda pruning (weighing each layer's weights by its inputs; an ONNX export of the model takes it)",
    "centroids": "centroid fine-tuning (re-parametrizes each layer's weight)",   # fine on a .pt2's parameters
}
TRACED = {  # per traced kind: why it has no layer modules, and what still works on it as it is
    EXPORTED: ("its layers are traced into plain ops",
               "unstructured pruning, fine-tuning, clustering and quantization"),
    SCRIPTED: ("its layers are compiled TorchScript", "unstructured pruning, fine-tuning, clustering without centroid "
                                                      "fine-tuning and quantization"),
}


def traced_kind(module: Any) -> str | None:
    """Which kind of traced model `module` is (a key of TRACED) when it runs traced ops instead of
    nn.Linear/Conv modules that a method could edit; None for an ordinary nn.Module (or no module)."""
    if module is None:
        return None
    import torch
    from torch import nn

    if isinstance(module, torch.jit.ScriptModule):
        return SCRIPTED
    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    if isinstance(module, torch.fx.GraphModule) and not any(isinstance(m, layers) for m in module.modules()):
        return EXPORTED
    return None


def traced_reason(edit: str, kind: str, unconvertible: str | None = None) -> str | None:
    """Why `edit` (a key of LAYER_EDITS) cannot run on a traced model of `kind` (a key of TRACED) as it is, or
    None; `unconvertible`: why its conversion to modules through ONNX (workbench.onnx_torch) failed, if it did."""
    if edit == "centroids" and kind != SCRIPTED:
        return None
    why, works = TRACED[kind]
    converting = f", and converting it to them through ONNX failed ({unconvertible})" if unconvertible else ""
    return (f"{LAYER_EDITS[edit]} edits nn.Linear/Conv modules, and {kind} has none ({why}){converting}. "
            f"{works[0].upper()}{works[1:]} work on it as it is")


def frozen_mode_note(module: Any) -> list[str]:
    """For training a torch.export program that normalizes or drops out: those ops keep the mode they were
    exported in (eval: fixed running statistics, no dropout), unlike training the model's own modules."""
    if traced_kind(module) != EXPORTED:
        return []
    ops = {str(n.target) for n in module.graph.nodes if n.op == "call_function"}
    if not any("batch_norm" in op or "dropout" in op for op in ops):
        return []
    return [f"trained as {EXPORTED}: its BatchNorm/dropout ops keep the mode they were exported in (eval: "
            "running statistics fixed, no dropout) while training"]


def needs_layer_modules(edit: str, module: Any) -> None:
    """A clear error when `edit` (a key of LAYER_EDITS) meets a traced model it cannot work on."""
    if (kind := traced_kind(module)) and (reason := traced_reason(edit, kind)):
        raise WorkbenchError(reason)


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy whose parameters are leaf tensors, as the original's are. copy.deepcopy of a TorchScript
    module clones its parameters through autograd, and an optimizer refuses such non-leaf tensors; copying
    it under no_grad and restoring each parameter's requires_grad keeps the copy trainable."""
    import copy

    import torch

    if not isinstance(module, torch.jit.ScriptModule):
        with warnings.catch_warnings():   # copying a torch.export module trips a deprecation inside torch itself
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                    category=FutureWarning)
            return copy.deepcopy(module)
    flags = {n: p.requires_grad for n, p in module.named_parameters()}
    with torch.no_grad():
        out = copy.deepcopy(module)
    for n, p in out.named_parameters():
        p.requires_grad_(flags.get(n, True))
    return out


def _load_torchscript(path: Path) -> LoadedModel:
    if not zipfile.is_zipfile(path):
        raise WorkbenchError(
            f"{path.name}: not a TorchScript archive; pickled checkpoints are never loaded "
            "(export with torch.jit.save, torch.export.save or as ONNX)"
        )
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise WorkbenchError(f"{path.name}: could not load TorchScript ({_first_line(exc)})") from None
    if _traced_in_training_mode(module):
        raise WorkbenchError(f"{path.name}: traced in training mode (BatchNorm normalizes each batch with its own "
                             "statistics, dropout drops), so its outputs depend on the batch: call model.eval() "
                             "before torch.jit.trace")
    return LoadedModel(path.name, "torch", module=module.eval(), source=path, file_bytes=path.stat().st_size)


TRAINING_FLAG = {"aten::batch_norm": 5, "aten::dropout": 2, "aten::feature_dropout": 2}  # op -> its `train` input


def _traced_in_training_mode(module: Any) -> bool:
    """Whether a TorchScript graph has the training mode baked in as a constant: torch.jit.trace of a model
    in train mode does that (a scripted model reads self.training, so eval() switches it)."""
    for node in module.inlined_graph.nodes():
        index = TRAINING_FLAG.get(node.kind())
        flag = list(node.inputs())[index] if index is not None and node.inputsSize() > index else None
        if flag is not None and flag.node().kind() == "prim::Constant" and flag.toIValue() is True:
            return True
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
