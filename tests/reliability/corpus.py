"""The bad-input corpus: how to make each malformed file, where it enters, and the error it must give.

Every case writes its input into a folder at test time (no binary blobs in the repo) and names the
fragment its one-line error must contain. `level` says when the problem can be seen: "load" (reading
the file), "run" (only once the model meets the data) or "spec" (recipe validation). `entries` are
the doors it is pushed through: "api" (load_model / load_user_data / load_recipe / run_pipeline),
"cli" (`workbench inspect|run|check|unpack` in a subprocess) and "app" (an upload on the Model page).
Kinds "packed" and "graph" are one half of a `workbench unpack` pair, the valid other half beside it (PAIR).
Cases at the "run" level also go through the worker, as queued runs between good ones.

Inputs marked `sentinel=True` would create `folder/SENTINEL` if anything unpickled them.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

SENTINEL = "PWNED"
UPLOAD_LIMIT_MB = 1   # the app tests lower server.maxUploadSize to this
FAST_MEASURE = {"batch_sizes": [1, 32], "warmup": 1, "repeats": 5, "threads": 1, "min_time_s": 0}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                             # "model", "data", "recipe", or "packed" / "graph" (unpack)
    make: Callable[[Path], Path]          # writes the input into a folder and returns its path
    expect: str                           # fragment of the one-line error
    level: str = "load"                   # "load", "run" or "spec"
    entries: tuple[str, ...] = ("api", "cli", "app")
    arch: str | None = None               # --arch for safetensors
    sentinel: bool = False

    def __str__(self) -> str:
        return self.name


class Sentinel:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- ONNX -----------------------------------------------------------------------------------------

def digits_onnx(weight: np.ndarray | None = None, out: str = "logits", extra_nodes: tuple = (),
                output_shape: tuple = ("batch", 10), in_shape: tuple = ("batch", 1, 8, 8),
                extra_inits: tuple = ()) -> onnx.ModelProto:
    """Flatten + Gemm on digits-shaped input: a model the workbench can run end to end."""
    if weight is None:
        weight = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32) * 0.1
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1), *extra_nodes]
    graph = helper.make_graph(
        nodes, "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(output_shape))],
        [numpy_helper.from_array(weight, "fc.weight"), *extra_inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _external(location: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        model = digits_onnx()
        tensor = model.graph.initializer[0]
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        return _save(model, folder / "external.onnx")
    return make


def _huge_dims(folder: Path) -> Path:
    model = digits_onnx()
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([1 << 20, 1 << 20])   # 2^40 floats declared, 2,560 bytes stored
    return _save(model, folder / "huge.onnx")


def _weights_with(value: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        weight = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
        weight[3, 7] = value
        return _save(digits_onnx(weight), folder / f"weights-{value}.onnx")
    return make


def _unknown_op(folder: Path) -> Path:
    model = digits_onnx(extra_nodes=(helper.make_node("Mystery", ["logits"], ["scores"], domain="com.example"),),
                        out="scores")
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return _save(model, folder / "mystery.onnx")


def _no_parameters(folder: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["logits"])], "empty",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _save(model, folder / "no-params.onnx")


def _reduced(axes: list[int], shape: tuple, name: str) -> Callable[[Path], Path]:
    """Gemm scores summed over `axes`: one number per sample (a regression head) or one per batch."""
    def make(folder: Path) -> Path:
        model = digits_onnx(extra_nodes=(helper.make_node("ReduceSum", ["logits", "axes"], ["total"], keepdims=0),),
                            out="total", output_shape=shape,
                            extra_inits=(numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes"),))
        return _save(model, folder / name)
    return make


def _no_nodes(folder: Path) -> Path:
    graph = helper.make_graph([], "nothing", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])])
    return _save(helper.make_model(graph), folder / "no-nodes.onnx")


def _dangling_input(folder: Path) -> Path:
    model = digits_onnx()
    model.graph.node[1].input[1] = "nowhere"      # a weight nobody defines
    return _save(model, folder / "dangling.onnx")


def _valid_bytes() -> bytes:
    return digits_onnx().SerializeToString()


# --- torch formats --------------------------------------------------------------------------------

def _pickle_named(name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(pickle.dumps(Sentinel(folder / SENTINEL)))
        return path
    return make


def _torch_save_zip(folder: Path) -> Path:
    import torch

    path = folder / "checkpoint.pt"
    torch.save({"state": Sentinel(folder / SENTINEL)}, str(path))   # a zip archive, like TorchScript
    return path


def _exported_mlp(folder: Path) -> Path:
    import torch

    from workbench.zoo import build

    path = folder / "mlp.pt2"
    program = torch.export.export(build("digits-mlp").eval(), (torch.zeros(2, 1, 8, 8),))
    torch.export.save(program, str(path))
    return path


def _train_mode_cnn(folder: Path) -> Path:
    import torch

    from workbench.zoo import build

    path = folder / "cnn-train-mode.pt2"
    program = torch.export.export(build("digits-cnn").train(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def _traced_train_mode_cnn(folder: Path) -> Path:
    import torch

    from workbench.zoo import build

    path = folder / "cnn-traced-train-mode.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tracer warns about BatchNorm's batch-size check in train mode
        torch.jit.trace(build("digits-cnn").train(), torch.rand(2, 1, 8, 8)).save(str(path))
    return path


def _rewrite_zip(path: Path, changes: dict[str, bytes]) -> Path:
    """Copy the zip at `path` with some members replaced or added (suffix match on member names)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    prefix = next(iter(members)).split("/")[0]
    for suffix, data in changes.items():
        target = next((n for n in members if n.endswith(suffix)), f"{prefix}/{suffix}")
        members[target] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _pt2_pickled_constant(folder: Path) -> Path:
    config = {"config": {"evil": {"path_name": "custom_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}}}
    return _rewrite_zip(_exported_mlp(folder), {
        "data/constants/model_constants_config.json": json.dumps(config).encode(),
        "data/constants/custom_obj_0": pickle.dumps(Sentinel(folder / SENTINEL)),
    })


def _pt2_pickled_weight(folder: Path) -> Path:
    path = _exported_mlp(folder)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    config["config"]["fc1.weight"]["use_pickle"] = True
    buffer = io.BytesIO()
    pickle.dump(Sentinel(folder / SENTINEL), buffer)
    return _rewrite_zip(path, {"data/weights/model_weights_config.json": json.dumps(config).encode(),
                               "data/weights/weight_0": buffer.getvalue()})


def _pt2_pickled_inputs(folder: Path) -> Path:
    import torch

    buffer = io.BytesIO()
    torch.save(((Sentinel(folder / SENTINEL),), {}), buffer)
    return _rewrite_zip(_exported_mlp(folder), {"data/sample_inputs/model.pt": buffer.getvalue()})


def _torchscript_wrong_input(folder: Path) -> Path:
    import torch

    path = folder / "wide.ts"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(100, 10))).save(str(path))
    return path


def _safetensors(change: Callable[[dict], None], name: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        from safetensors.torch import save_file

        from workbench.zoo import build

        state = build("digits-mlp").state_dict()
        change(state)
        path = folder / name
        save_file(state, str(path))
        return path
    return make


def _drop_bias(state: dict) -> None:
    state.pop("fc3.bias")


def _wrong_shape(state: dict) -> None:
    import torch

    state["fc1.weight"] = torch.zeros(300, 65)


def _nan_weight(state: dict) -> None:
    state["fc2.weight"][0, 0] = float("nan")


# --- data -----------------------------------------------------------------------------------------

def _digits(n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


def _npz(name: str, **arrays: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        x, y = _digits()
        path = folder / name
        np.savez(path, **{key: build(x, y) for key, build in arrays.items()})
        return path
    return make


def _npz_pickled(folder: Path) -> Path:
    x, _ = _digits()
    path = folder / "objects.npz"
    labels = np.empty(len(x), dtype=object)
    labels[:] = [Sentinel(folder / SENTINEL)] * len(x)
    np.savez(path, x=x, y=labels)
    return path


def _with_nan(x: np.ndarray, _y: np.ndarray) -> np.ndarray:
    x = x.copy()
    x[5, 0, 3, 3] = np.nan
    return x


def _text(name: str, content: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content)
        return path
    return make


def _csv(rows: int, columns: int, name: str = "features.csv") -> Callable[[Path], Path]:
    header = ",".join(f"f{i}" for i in range(columns)) + ",label\n"
    body = "".join(",".join(["0.5"] * columns) + f",{i % 10}\n" for i in range(rows))
    return _text(name, (header + body).encode())


# --- recipes --------------------------------------------------------------------------------------

def _oversized(folder: Path) -> Path:
    """A well-formed .npz just over the upload limit (the digits plus a padding array)."""
    x, y = _digits()
    path = folder / "big.npz"
    np.savez(path, x=x, y=y, padding=np.zeros(UPLOAD_LIMIT_MB * 1024**2 // 8 + 1))
    return path


def _recipe(name: str, body: object) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump(body) if not isinstance(body, str) else body)
        return path
    return make


def _stage_recipe(name: str, stages: list) -> Callable[[Path], Path]:
    return _recipe(name, {"model": "digits-mlp", "stages": stages, "measure": FAST_MEASURE})


def _training_recipe(name: str, stages: list, **train: Callable[[np.ndarray, np.ndarray], np.ndarray]
                     ) -> Callable[[Path], Path]:
    """A recipe on the user's own evaluation file plus a training file built from the same samples by `train`."""
    def make(folder: Path) -> Path:
        _npz(f"{name}-eval.npz", x=lambda x, y: x, y=lambda x, y: y)(folder)
        _npz(f"{name}-train.npz", **train)(folder)
        data = {"path": str(folder / f"{name}-eval.npz"), "train_path": str(folder / f"{name}-train.npz")}
        return _recipe(name, {"model": "digits-mlp", "data": data, "stages": stages, "measure": FAST_MEASURE})(folder)
    return make


MODEL_CASES = [
    Case("onnx-truncated", "model", _text("cut.onnx", _valid_bytes()[:1500]), "not a valid ONNX file"),
    Case("onnx-random-bytes", "model", _text("noise.onnx", np.random.default_rng(1).bytes(4096)),
         "not a valid ONNX file"),
    Case("onnx-empty", "model", _text("empty.onnx", b""), "the file is empty"),
    Case("onnx-no-nodes", "model", _no_nodes, "the graph has no nodes"),
    Case("onnx-dangling-input", "model", _dangling_input, "invalid ONNX model"),
    Case("onnx-unknown-op", "model", _unknown_op, "ONNX Runtime cannot load the model"),
    Case("onnx-external-parent", "model", _external("../../etc/passwd"), "points outside the model's folder"),
    Case("onnx-external-absolute", "model", _external("/etc/passwd"), "points outside the model's folder"),
    Case("onnx-external-missing", "model", _external("weights.bin"), "external data file 'weights.bin' is missing"),
    Case("onnx-huge-dims", "model", _huge_dims, "too small for the declared shape"),
    Case("onnx-huge-input-dims", "model", lambda f: _save(digits_onnx(in_shape=("batch", 1 << 40, 1 << 40)),
                                                          f / "wide.onnx"),
         "Integer overflow while multiplying dimension values"),
    Case("onnx-nan-weights", "model", _weights_with(float("nan")), "NaN or infinite values in fc.weight"),
    Case("onnx-inf-weights", "model", _weights_with(float("inf")), "NaN or infinite values in fc.weight"),
    Case("onnx-zero-parameters", "model", _no_parameters, "has no parameters"),
    Case("onnx-not-class-scores", "model", _reduced([1], ("batch",), "regression.onnx"),
         "expected (N, classes) scores", level="run"),
    Case("onnx-scalar-output", "model", _reduced([0, 1], (), "scalar.onnx"), "expected one row per sample",
         level="run"),
    Case("pickle-as-pt", "model", _pickle_named("evil.pt"), "pickled checkpoints are never loaded", sentinel=True),
    Case("pickle-as-pth", "model", _pickle_named("evil.pth"), "unsupported", sentinel=True),
    Case("pickle-as-pt2", "model", _pickle_named("evil.pt2"), "not a torch.export archive", sentinel=True),
    Case("pickle-as-ts", "model", _pickle_named("evil.ts"), "not a TorchScript archive", sentinel=True),
    Case("torch-save-zip-as-pt", "model", _torch_save_zip, "could not load TorchScript", sentinel=True),
    Case("pt2-pickled-constant", "model", _pt2_pickled_constant, "holds pickled Python objects", sentinel=True),
    Case("pt2-pickled-weight", "model", _pt2_pickled_weight, "holds pickled Python objects", sentinel=True),
    Case("pt2-pickled-example-inputs", "model", _pt2_pickled_inputs, "could not load the torch.export program",
         sentinel=True),
    # every run evaluates and times other batch sizes: refused on load, with the export call that fixes it
    Case("pt2-fixed-batch", "model", _exported_mlp, "exported for batch size 2 only"),
    Case("pt2-training-mode", "model", _train_mode_cnn, "exported in training mode"),
    Case("torchscript-training-mode", "model", _traced_train_mode_cnn, "traced in training mode"),
    Case("torchscript-wrong-input-shape", "model", _torchscript_wrong_input, "does not accept samples of shape",
         level="run"),
    Case("safetensors-missing-tensor", "model", _safetensors(_drop_bias, "missing.safetensors"), "missing fc3.bias",
         arch="digits-mlp"),
    Case("safetensors-misshaped-tensor", "model", _safetensors(_wrong_shape, "shape.safetensors"),
         "shape mismatch in fc1.weight", arch="digits-mlp"),
    Case("safetensors-nan", "model", _safetensors(_nan_weight, "nan.safetensors"),
         "NaN or infinite values in fc2.weight", arch="digits-mlp"),
    Case("safetensors-garbage", "model", _text("noise.safetensors", b"\xff" * 64), "not a readable safetensors file",
         arch="digits-mlp"),
    Case("safetensors-unknown-arch", "model", _safetensors(lambda s: None, "ok.safetensors"),
         "unknown architecture 'resnet-9000'", arch="resnet-9000", entries=("api", "cli")),
]

DATA_CASES = [
    Case("npz-without-x", "data", _npz("nox.npz", inputs=lambda x, y: x, labels=lambda x, y: y), "no 'x' array"),
    Case("npz-labels-out-of-range", "data", _npz("range.npz", x=lambda x, y: x, y=lambda x, y: y + 40),
         "labels range", level="run"),
    Case("npz-negative-labels", "data", _npz("neg.npz", x=lambda x, y: x, y=lambda x, y: -y - 1),
         "labels must be non-negative integers"),
    Case("npz-label-count", "data", _npz("count.npz", x=lambda x, y: x, y=lambda x, y: y[:-3]), "labels have shape"),
    Case("npz-shape-mismatch", "data", _npz("shape.npz", x=lambda x, y: x.reshape(len(x), -1)[:, :5]),
         "samples have shape (5,), the model expects (1, 8, 8)", level="run"),
    Case("npz-text-inputs", "data", _npz("text.npz", x=lambda x, y: np.array(["a"] * len(x))),
         "x holds <U1 values; inputs must be numbers"),
    Case("npz-text-labels", "data", _npz("textlabels.npz", x=lambda x, y: x, y=lambda x, y: y.astype(str)),
         "labels must be non-negative integers"),
    Case("npz-nan-inputs", "data", _npz("nan.npz", x=_with_nan, y=lambda x, y: y), "NaN or infinite values in x"),
    Case("npz-zero-samples", "data", _npz("zero.npz", x=lambda x, y: x[:0]), "x has no samples"),
    Case("npz-pickled-objects", "data", _npz_pickled, "not a readable .npz file", sentinel=True),
    Case("npz-random-bytes", "data", _text("noise.npz", np.random.default_rng(2).bytes(2048)),
         "not a readable .npz file"),
    Case("npz-empty-file", "data", _text("empty.npz", b""), "the file is empty"),
    Case("csv-text-columns", "data", _text("text.csv", b"a,b,label\n1,x,0\n2,y,1\n"), "all columns must be numeric"),
    Case("csv-ragged-rows", "data", _text("ragged.csv", b"a,b,label\n1,2,0\n3,1\n"), "row 3 has 2 columns"),
    Case("csv-binary", "data", _text("binary.csv", b"a,b\n\xff\xfe\x00\x81,1\n"), "not a readable UTF-8 CSV file"),
    Case("csv-header-only", "data", _text("header.csv", b"a,b,label\n"), "needs a header row and at least one"),
    Case("csv-empty-file", "data", _text("empty.csv", b""), "the file is empty"),
    Case("csv-wrong-width", "data", _csv(20, 10), "samples have shape (10,), the model expects (1, 8, 8)",
         level="run"),
    Case("data-unknown-suffix", "data", _text("eval.txt", b"1,2,3\n"), "unsupported"),
    Case("upload-over-limit", "data", _oversized, f"is over the upload limit of {UPLOAD_LIMIT_MB} MB",
         entries=("app",)),
]

RECIPE_ENTRIES = ("api", "cli")   # the app builds its recipes from widgets; it reads none
RECIPE_CASES = [
    Case("recipe-unknown-method", "recipe", _stage_recipe("method", [{"prune": {"method": "snip"}}]),
         "stages[0].prune.method: unknown 'snip'", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-sparsity-1.5", "recipe", _stage_recipe("sparsity", [{"prune": {"sparsity": 1.5}}]),
         "stages[0].prune.sparsity: must be in [0, 1), got 1.5", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-bits-0", "recipe", _stage_recipe("bits", [{"quantize": {"method": "fake", "weight_bits": 0}}]),
         "stages[0].quantize.weight_bits: must be an integer in 1..32, got 0", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-negative-epochs", "recipe", _stage_recipe("epochs", [{"finetune": {"epochs": -3}}]),
         "stages[0].finetune.epochs: must be >= 0, got -3", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-missing-model", "recipe", _recipe("nomodel", {"stages": [{"prune": {"sparsity": 0.5}}]}),
         "model: missing", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-model-file-missing", "recipe", _recipe("gone", {"model": "gone.onnx", "measure": FAST_MEASURE}),
         "gone.onnx: model file not found", level="run", entries=RECIPE_ENTRIES),
    Case("recipe-unknown-stage", "recipe", _stage_recipe("stage", [{"distil": {}}]), "unknown stage 'distil'",
         level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-not-yaml", "recipe", _recipe("broken", "model: [digits-mlp\nstages: {"), "not valid YAML",
         level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-not-a-mapping", "recipe", _recipe("list", ["digits-mlp"]), "recipe: expected a mapping",
         level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-unknown-field", "recipe", _recipe("field", {"model": "digits-mlp", "epochs": 3}),
         "recipe.epochs: unknown field", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-sparsity-text", "recipe", _stage_recipe("text", [{"prune": {"sparsity": "most"}}]),
         "stages[0].prune.sparsity: expected a number, got 'most'", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-lr-text", "recipe", _stage_recipe("lr", [{"finetune": {"lr": "fast"}}]),
         "stages[0].finetune.lr: expected a number, got 'fast'", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-zero-batch", "recipe", _recipe("batch", {"model": "digits-mlp", "measure": {"batch_sizes": [0]}}),
         "measure.batch_sizes: must be a non-empty list of positive integers", level="spec", entries=RECIPE_ENTRIES),
    Case("recipe-reconstruct-unknown", "recipe", _stage_recipe("recon", [{"prune": {"reconstruct": "exact"}}]),
         "stages[0].prune.reconstruct: unknown 'exact' (known: none, refit, obs)", level="spec",
         entries=RECIPE_ENTRIES),
    # OBS picks each unit's pruned weights itself: with random scores it would silently not be a random baseline
    Case("recipe-obs-random", "recipe", _stage_recipe("obsrandom", [{"prune": {
        "method": "random", "reconstruct": "obs"}}]),
         "stages[0].prune.reconstruct: obs chooses the pruned weights itself", level="spec", entries=RECIPE_ENTRIES),
    # a layer pattern with a typo would otherwise do nothing, silently (the run would not be what was asked)
    Case("recipe-prune-exclude-typo", "recipe", _stage_recipe("pexclude", [{"prune": {"sparsity": 0.5,
                                                                                     "exclude": ["fc9"]}}]),
         "prune exclude: 'fc9' matches no layer (layers: fc1, fc2, fc3)", level="run", entries=RECIPE_ENTRIES),
    Case("recipe-bits-override-typo", "recipe", _stage_recipe("qoverride", [{"quantize": {
        "method": "fake", "weight_bits": 8, "overrides": {"fc9": 4}}}]),
         "overrides: 'fc9' matches no layer (layers: fc1, fc2, fc3)", level="run", entries=RECIPE_ENTRIES),
    Case("recipe-structured-exclude-typo", "recipe", _stage_recipe("sexclude", [{"structured": {
        "exclude": ["fc9"]}}]),
         "structured exclude: 'fc9' matches no layer (layers: fc1, fc2, fc3)", level="run", entries=RECIPE_ENTRIES),
]

def _onnx_recipe(name: str, model: Callable[[], onnx.ModelProto], stages: list) -> Callable[[Path], Path]:
    """A recipe whose stages need torch modules, on an ONNX graph the run must first convert to them."""
    def make(folder: Path) -> Path:
        path = _save(model(), folder / f"{name}.onnx")
        return _recipe(name, {"model": str(path), "stages": stages, "measure": FAST_MEASURE})(folder)
    return make


def _cumulative() -> onnx.ModelProto:
    """Class scores through a running sum: ONNX Runtime runs it, the torch conversion has no CumSum."""
    return digits_onnx(extra_nodes=(helper.make_node("CumSum", ["logits", "axis"], ["scores"], name="running"),),
                       out="scores", extra_inits=(numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"),))


def _weight_qdq() -> onnx.ModelProto:
    """A graph whose weight is stored as int8 and dequantized at run time (already quantized)."""
    model = digits_onnx()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    scale = np.float32(np.abs(weight).max() / 127)
    del model.graph.initializer[:]
    model.graph.initializer.extend([numpy_helper.from_array(np.round(weight / scale).astype(np.int8), "fc.q"),
                                    numpy_helper.from_array(np.array(scale), "fc.scale")])
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["fc.q", "fc.scale"], ["fc.weight"]))
    return model


CONVERSION_CASES = [  # methods that need torch modules on ONNX graphs that do not convert: refused, saying why
    Case("onnx-unconvertible-op-structured", "recipe", _onnx_recipe("cumsum", _cumulative, [{"structured": {}}]),
         "the ONNX op CumSum (node 'running') has no torch conversion", level="run", entries=RECIPE_ENTRIES),
    Case("onnx-quantized-finetune", "recipe", _onnx_recipe("qdq", _weight_qdq, [{"finetune": {"epochs": 1}}]),
         "the graph is quantized (DequantizeLinear); only float graphs convert to torch", level="run",
         entries=RECIPE_ENTRIES),
]

TRAINING_CASES = [  # a training file next to the user's evaluation data: refused before anything trains
    Case("recipe-train-without-labels", "recipe", _training_recipe("nolabels", [{"finetune": {"epochs": 1}}],
                                                                   x=lambda x, y: x),
         "training data needs labels", level="run", entries=RECIPE_ENTRIES),
    Case("recipe-train-other-shape", "recipe", _training_recipe("trainshape", [{"finetune": {"epochs": 1}}],
                                                                x=lambda x, y: x.reshape(len(x), -1)[:, :5],
                                                                y=lambda x, y: y),
         "samples have shape (5,), the evaluation data's (trainshape-eval.npz) (1, 8, 8)", level="run",
         entries=RECIPE_ENTRIES),
    Case("recipe-transfer-unseen-class", "recipe", _training_recipe("unseen", [{"transfer": {"epochs": 1}}],
                                                                    x=lambda x, y: x, y=lambda x, y: y % 2),
         "the training labels (unseen-train.npz) stop at 1", level="run", entries=RECIPE_ENTRIES),
]

PAIR = {"packed": "pair.graph.onnx", "graph": "pair.weights.packed"}   # the valid other half, beside the input
PACKED_ENTRIES = ("api", "cli")   # `workbench unpack`; the app offers the two files, it does not read them


def _valid_pair() -> tuple[bytes, bytes]:
    """graph.onnx and weights.packed of the digits ONNX model, as a clustered run writes them."""
    from workbench.packed_model import split_graph
    from workbench.packing import pack

    model = digits_onnx()
    tensors = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return split_graph(model, tensors), pack(tensors)


def _unpack_input(kind: str, name: str, spoil: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    """A bad `kind` file (`spoil` of the valid one) named `name`, with the valid other half written beside it."""
    def make(folder: Path) -> Path:
        graph, packed = _valid_pair()
        good, bad = (graph, packed) if kind == "packed" else (packed, graph)
        (folder / PAIR[kind]).write_bytes(good)
        path = folder / name
        path.write_bytes(spoil(bad))
        return path
    return make


def _other_weights(_: bytes) -> bytes:
    from workbench.packing import pack

    return pack({"w": np.zeros((3, 3), np.float32)})


def _unpack_case(name: str, kind: str, file: str, spoil: Callable[[bytes], bytes], expect: str) -> Case:
    return Case(name, kind, _unpack_input(kind, file, spoil), expect, entries=PACKED_ENTRIES)


def _noise(seed: int) -> Callable[[bytes], bytes]:
    return lambda _: np.random.default_rng(seed).bytes(2048)


UNPACK_CASES = [  # `workbench unpack graph.onnx weights.packed`: one half bad, the other valid
    _unpack_case("packed-empty", "packed", "empty.packed", lambda b: b"", "not a workbench packed file"),
    _unpack_case("packed-random-bytes", "packed", "noise.packed", _noise(2), "not a workbench packed file"),
    _unpack_case("packed-truncated", "packed", "cut.packed", lambda b: b[:len(b) // 2], "truncated"),
    _unpack_case("packed-future-version", "packed", "v9.packed", lambda b: b[:4] + b"\x09" + b[5:],
                 "unsupported version 9"),
    _unpack_case("packed-flipped-bit", "packed", "flip.packed", lambda b: b[:40] + bytes([b[40] ^ 4]) + b[41:],
                 "checksum mismatch"),
    _unpack_case("packed-other-model", "packed", "other.packed", _other_weights,
                 "are the two files from the same run?"),
    _unpack_case("graph-random-bytes", "graph", "noise.onnx", _noise(3), "graph.onnx: not"),
    _unpack_case("graph-truncated", "graph", "cut.onnx", lambda b: b[:len(b) // 2], "graph.onnx: not"),
    _unpack_case("graph-plain-model", "graph", "model.onnx", lambda b: digits_onnx().SerializeToString(),
                 "not a graph written beside a weights.packed"),
]

ALL_CASES = MODEL_CASES + DATA_CASES + RECIPE_CASES + CONVERSION_CASES + TRAINING_CASES + UNPACK_CASES
