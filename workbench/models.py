"""Load models without running user code by accident, and describe them layer by layer.

Sources: a sample by name; user files: ONNX (any number of inputs, any dtype), `torch.export`
programs (.pt2), TorchScript (.pt/.ts) and safetensors weights for a built-in architecture.
Nothing is ever unpickled: .pt2 archives are checked for pickled objects first and loaded with
`TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`; ONNX external data must stay inside the model's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from workbench.errors import WorkbenchError
from workbench.specs import ModelRef

ONNX_MAX_BYTES = 2 * 1024**3


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
    if suffix == ".safetensors":
        loaded = _load_safetensors(path, ref.arch or "")
    elif suffix in loaders:
        loaded = loaders[suffix](path)
    else:
        raise WorkbenchError(f"{path.name}: unsupported model format '{suffix}'")
    if ref.input_shape:
        loaded.input_shape = tuple(ref.input_shape)
    return loaded


def _load_sample(name: str) -> LoadedModel:
    from workbench import zoo
    from workbench.settings import get_settings

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
    return LoadedModel(path.name, "onnx", onnx_model=model, source=path, file_bytes=path.stat().st_size)


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """External tensor data must be a relative path inside the model's own folder."""
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
    """Force every torch.load inside (including torch.export's own) to refuse pickled code."""
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
    """Reject archives holding pickled custom/opaque objects, which torch.export unpickles."""
    if not zipfile.is_zipfile(path):
        raise WorkbenchError(f"{path.name}: not a torch.export archive (.pt2 files are zip archives)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if not any("/models/" in n and n.endswith(".json") for n in names):
            raise WorkbenchError(f"{path.name}: not a torch.export archive (no exported program inside)")
        for name in names:
            if name.endswith("_constants_config.json"):
                config = json.loads(archive.read(name)).get("config", {})
                if any(not str(c.get("path_name", "")).startswith("tensor_") for c in config.values()):
                    raise WorkbenchError(f"{path.name}: holds pickled Python objects; refusing to load them")


def _load_pt2(path: Path) -> LoadedModel:
    import torch

    _check_pt2_archive(path)
    try:
        with _weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as exc:
        raise WorkbenchError(f"{path.name}: could not load the torch.export program ({_first_line(exc)})") from None
    module = program.module()
    shape = None
    args = program.example_inputs[0] if program.example_inputs else ()
    if len(args) == 1 and hasattr(args[0], "shape"):
        shape = tuple(args[0].shape[1:])
    return LoadedModel(path.name, "torch", module=module, source=path, file_bytes=path.stat().st_size,
                       input_shape=shape)


def _load_torchscript(path: Path) -> LoadedModel:
    import torch

    if not zipfile.is_zipfile(path):
        raise WorkbenchError(
            f"{path.name}: not a TorchScript archive; pickled checkpoints are never loaded "
            "(export with torch.jit.save, torch.export.save or as ONNX)"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise WorkbenchError(f"{path.name}: could not load TorchScript ({_first_line(exc)})") from None
    return LoadedModel(path.name, "torch", module=module.eval(), source=path, file_bytes=path.stat().st_size)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
