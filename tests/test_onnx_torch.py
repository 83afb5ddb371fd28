"""ONNX graphs become trainable torch modules that compute what ONNX Runtime computes, keep the graph's layer
names, export again with a dynamic batch, and take structured pruning; what does not convert says why."""

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.architectures import MobileNetV3Block, TinyResNet, TokenEncoder, ViewMLP, random_init
from workbench import onnx_ops, zoo
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session
from workbench.export import export_onnx
from workbench.onnx_torch import convert
from workbench.pruning import torch_weights
from workbench.specs import StructuredSpec
from workbench.structured import prune_structured

X = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
EXAMPLE = (torch.from_numpy(X[:2]),)


def _legacy(module: nn.Module, batch: int | None = None) -> onnx.ModelProto:
    """The TorchScript exporter's graph (what most ONNX files in the wild come from): shape arithmetic
    (Shape, Gather, Unsqueeze, Concat) feeding a Reshape, Constant nodes, Flatten, GlobalAveragePool.
    `batch`: export for that batch size only (no dynamic axis), as many files are."""
    buffer = io.BytesIO()
    example = EXAMPLE if batch is None else (torch.from_numpy(X[:batch]),)
    axes = None if batch is not None else {"input": {0: "batch"}, "logits": {0: "batch"}}
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the tracer's notes on torch's own attention code
        torch.onnx.export(module.eval(), example, buffer, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def _runs_like_ort(module: nn.Module, model: onnx.ModelProto, batch: int = 5) -> None:
    x = np.random.default_rng(batch).random((batch, 1, 8, 8), dtype=np.float32)
    (want,) = make_session(model).run(None, {"input": x})
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "digits-vit"])
def test_each_sample_export_converts_with_its_layer_names_and_exports_again(name):
    original = zoo.load_sample(name).eval()
    model = export_onnx(original, EXAMPLE)
    conversion = convert(model, [X])
    assert conversion.max_error < 1e-5
    converted = dict(conversion.module.named_parameters())
    assert {n for n, p in original.named_parameters() if p.ndim == 2} <= set(converted)   # Linear weights by name
    linears = {n for n, m in conversion.module.named_modules() if isinstance(m, nn.Linear)}
    assert linears == {n for n, m in original.named_modules() if isinstance(m, nn.Linear)}
    again = export_onnx(conversion.module, EXAMPLE)           # the torch.export path, batch axis dynamic
    for batch in (1, 5):
        _runs_like_ort(conversion.module, again, batch)
        _runs_like_ort(conversion.module, model, batch)


def test_legacy_exporter_graphs_keep_the_batch_dynamic_and_prune_structurally():
    mlp = _legacy(random_init(ViewMLP()))
    assert {"Shape", "Gather", "Concat", "Reshape"} <= {n.op_type for n in mlp.graph.node}
    converted = convert(mlp, [X]).module
    _runs_like_ort(converted, mlp, batch=3)

    resnet = _legacy(random_init(TinyResNet()))
    conversion = convert(resnet, [X])
    pruned, report = prune_structured(conversion.module, EXAMPLE, StructuredSpec(ratio=0.5))
    assert report["params_after"] < 0.4 * report["params_before"]
    assert report["skipped"] == [("fc", "classifier: its outputs are the model's outputs")]
    session = make_session(export_onnx(pruned, EXAMPLE))
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"input": X})[0], pruned(torch.from_numpy(X)).numpy(),
                                   atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("make, exporter", [(MobileNetV3Block, "legacy"), (MobileNetV3Block, "dynamo"),
                                            (TokenEncoder, "legacy"), (TokenEncoder, "dynamo")])
def test_common_blocks_convert_from_either_exporter(make, exporter):
    module = random_init(make()).eval()
    model = _legacy(module) if exporter == "legacy" else export_onnx(module, EXAMPLE)
    conversion = convert(model, [X])
    assert conversion.max_error < 1e-5 and conversion.layers >= 2
    _runs_like_ort(conversion.module, model, batch=3)
    _runs_like_ort(conversion.module, export_onnx(conversion.module, EXAMPLE), batch=3)


class TokenClassifier(nn.Module):
    """Token ids and an attention mask in, positions from arange over the sequence: what language models'
    exports look like (Range, Gather on embedding tables, int64 inputs with dynamic batch and length)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos, self.out = nn.Embedding(50, 16), nn.Embedding(12, 16), nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]).unsqueeze(0))
        weight = mask.unsqueeze(-1).to(x.dtype)
        return self.out((x * weight).sum(1) / weight.sum(1))


def test_token_id_models_with_positions_from_a_range_convert_for_any_batch_and_length():
    rng = np.random.default_rng(0)
    ids, mask = rng.integers(0, 50, (6, 10)), (np.arange(10)[None] < rng.integers(3, 11, (6, 1))).astype(np.int64)
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2]))
        torch.onnx.export(random_init(TokenClassifier()).eval(), example, buffer, dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], output_names=["logits"],
                          dynamic_axes={"ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}, "logits": {0: "b"}})
    model = onnx.load_from_string(buffer.getvalue())
    assert "Range" in {n.op_type for n in model.graph.node}
    conversion = convert(model, [ids, mask])
    assert conversion.max_error < 1e-5
    tables = {n for n, m in conversion.module.named_modules() if isinstance(m, nn.Embedding)}
    assert tables == {"tok", "pos"}                  # lookups stay lookups: pruning and clustering leave them
    assert set(torch_weights(conversion.module)) == {"out.weight"}
    session = make_session(model)
    for batch, length in ((1, 4), (6, 10)):   # other batch sizes and lengths than the check's
        feeds = {"ids": ids[:batch, :length], "mask": mask[:batch, :length]}
        with torch.no_grad():
            got = conversion.module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        np.testing.assert_allclose(got, session.run(None, feeds)[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["digits-cnn", "digits-vit"])
def test_a_graph_exported_for_batch_1_only_converts_to_a_module_for_any_batch(name):
    """Many files fix the batch at 1, baking it into their reshapes; the check runs ONNX Runtime one sample
    at a time, and the module (which trains on batches of 64) takes any batch."""
    fixed = _legacy(zoo.load_sample(name), batch=1)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    module = convert(fixed, [X]).module
    session = make_session(fixed)
    want = np.concatenate([session.run(None, {"input": X[i:i + 1]})[0] for i in range(len(X))])
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(X)).numpy(), want, atol=1e-5, rtol=1e-4)


def test_a_fixed_batch_folded_into_other_sizes_is_refused_saying_how_to_export():
    """Sequence-first attention folds the batch into (batch x heads): no reshape rule can free it."""
    folded = _legacy(random_init(TokenEncoder()), batch=1)
    with pytest.raises(WorkbenchError, match="exported for batch size 1 only and folds it into its ops: export it "
                                             "with a dynamic batch axis"):
        convert(folded, [X])


def test_a_reshape_that_splits_channels_fails_loudly_when_they_shrink_instead_of_mixing_samples():
    """The ViT's qkv reshape (-1, 16, 3, 4, 16): -1 is the batch. Left as -1, removing qkv channels would
    fold samples into each other and still run; the conversion pins it, so the layer is left whole."""
    conversion = convert(export_onnx(zoo.load_sample("digits-vit").eval(), EXAMPLE), [X])
    _, report = prune_structured(conversion.module, EXAMPLE, StructuredSpec(ratio=0.5))
    reasons = dict(report["skipped"])
    assert "breaks the forward pass" in reasons["blocks.0.attn.qkv"]
    assert report["params_after"] < report["params_before"]    # the MLP neurons still go


def test_layers_torch_pruning_cannot_rank_are_left_whole_and_the_rest_is_pruned():
    """The TorchScript exporter splits the ViT's fused qkv projection with Split: Torch-Pruning fails scoring
    that group. Those layers stay whole, named with the reason; the MLP neurons still go."""
    conversion = convert(_legacy(zoo.load_sample("digits-vit").eval()), [X])
    _, report = prune_structured(conversion.module, EXAMPLE, StructuredSpec(ratio=0.5))
    unranked = [name for name, why in report["skipped"] if why.startswith("Torch-Pruning cannot rank its channels")]
    assert len(unranked) == 2 and report["params_after"] < 0.5 * report["params_before"]


def _graph(nodes, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_gemm_without_transposed_weight_scaled_by_alpha_and_beta_becomes_one_linear():
    rng = np.random.default_rng(1)
    w, c = rng.normal(size=(64, 10)).astype(np.float32), rng.normal(size=(10,)).astype(np.float32)
    model = _graph([helper.make_node("Gemm", ["input", "w", "c"], ["out"], alpha=0.5, beta=2.0)], {"w": w, "c": c})
    module = convert(model, [X.reshape(8, 64)]).module
    assert isinstance(module.get_submodule("w"), nn.Linear)
    np.testing.assert_allclose(module.get_submodule("w").weight.detach().numpy(), 0.5 * w.T, rtol=1e-6)


def test_what_does_not_convert_says_what_and_where():
    top = _graph([helper.make_node("TopK", ["input", "k"], ["out", "idx"], name="pick")],
                 {"k": np.array([3], dtype=np.int64)})
    with pytest.raises(WorkbenchError, match="the ONNX op TopK \\(node 'pick'\\) has no torch conversion"):
        convert(top, [X.reshape(8, 64)])
    scale = np.array(0.1, dtype=np.float32)
    quantized = _graph([helper.make_node("QuantizeLinear", ["input", "s"], ["q"]),
                        helper.make_node("DequantizeLinear", ["q", "s"], ["out"])], {"s": scale})
    with pytest.raises(WorkbenchError, match="the graph is quantized \\(DequantizeLinear, QuantizeLinear\\)"):
        convert(quantized, [X.reshape(8, 64)])


def test_padding_comparisons_and_elementwise_ops_compute_what_onnx_runtime_computes():
    """Ops of exports from other frameworks (TF, Keras): Pad in constant and reflect mode, PRelu, instance norm,
    variadic Max/Min/Sum/Mean, comparisons feeding Where, Tile, rounding, ReduceMin."""
    rng = np.random.default_rng(3)
    inits = {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64), "half": np.array(0.5, dtype=np.float32),
             "conv.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
             "slope": rng.uniform(0.1, 0.3, size=(4, 1, 1)).astype(np.float32),
             "scale": rng.uniform(0.5, 1.5, size=4).astype(np.float32), "shift": rng.normal(size=4).astype(np.float32),
             "two": np.array(2.0, dtype=np.float32), "repeats": np.array([1, 2, 1, 1], dtype=np.int64),
             "axes": np.array([1], dtype=np.int64), "fc.weight": rng.normal(size=(10, 800)).astype(np.float32)}
    nodes = [helper.make_node("Pad", ["x", "pads", "half"], ["p1"], mode="constant"),
             helper.make_node("Pad", ["p1", "pads"], ["p2"], mode="reflect"),
             helper.make_node("Conv", ["p2", "conv.weight"], ["c"]),                          # N x 4 x 10 x 10
             helper.make_node("PRelu", ["c", "slope"], ["pr"]),
             helper.make_node("InstanceNormalization", ["pr", "scale", "shift"], ["inorm"]),
             helper.make_node("Neg", ["inorm"], ["neg"]),
             helper.make_node("Max", ["inorm", "neg", "half"], ["mx"]),
             helper.make_node("Min", ["mx", "two"], ["mn"]),
             helper.make_node("Greater", ["inorm", "half"], ["gt"]), helper.make_node("Less", ["inorm", "neg"], ["lt"]),
             helper.make_node("Not", ["lt"], ["nlt"]), helper.make_node("And", ["gt", "nlt"], ["both"]),
             helper.make_node("Floor", ["inorm"], ["fl"]), helper.make_node("Ceil", ["inorm"], ["ce"]),
             helper.make_node("Where", ["both", "fl", "ce"], ["w"]),
             helper.make_node("Sum", ["w", "mn", "inorm"], ["sm"]), helper.make_node("Mean", ["sm", "mx"], ["me"]),
             helper.make_node("ReduceMin", ["me", "axes"], ["rmin"], keepdims=1),                 # N x 1 x 10 x 10
             helper.make_node("Sub", ["me", "rmin"], ["d"]),
             helper.make_node("Tile", ["d", "repeats"], ["t"]),                                   # N x 8 x 10 x 10
             helper.make_node("Flatten", ["t"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc.weight"], ["out"], transB=1)]
    graph = helper.make_graph(nodes, "ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    conversion = convert(model, [X])
    assert conversion.max_error < 1e-5 and conversion.layers == 2
    x = np.random.default_rng(4).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(conversion.module(torch.from_numpy(x)).numpy(),
                                   make_session(model).run(None, {"x": x})[0], atol=1e-4, rtol=1e-4)


def _same_padding_graph(average_excludes_padding: bool) -> onnx.ModelProto:
    weight = np.random.default_rng(5).normal(size=(4, 1, 3, 3)).astype(np.float32)
    fc = np.random.default_rng(6).normal(size=(10, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),   # 8 -> 4, pad (0, 1)
             helper.make_node("MaxPool", ["c"], ["m"], auto_pad="SAME_LOWER", kernel_shape=[2, 2]),  # pad (1, 0)
             helper.make_node("AveragePool", ["m"], ["a"], auto_pad="SAME_UPPER", kernel_shape=[3, 3], strides=[2, 2],
                              count_include_pad=0 if average_excludes_padding else 1),              # 4 -> 2
             helper.make_node("Flatten", ["a"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["out"], transB=1)]
    graph = helper.make_graph(nodes, "same", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 10])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_same_padding_from_the_input_size_converts_and_uneven_excluded_average_padding_is_refused():
    """auto_pad SAME (Keras/TF exports) pads by the input's size, unevenly when the stride leaves one pixel over."""
    conversion = convert(_same_padding_graph(average_excludes_padding=False), [X])
    assert conversion.max_error < 1e-5 and isinstance(conversion.module.get_submodule("w"), nn.Conv2d)
    with pytest.raises(WorkbenchError, match="AveragePool with uneven padding that excludes the padding"):
        convert(_same_padding_graph(average_excludes_padding=True), [X])


def test_a_conversion_that_computes_something_else_is_refused(monkeypatch):
    model = export_onnx(zoo.load_sample("digits-mlp").eval(), EXAMPLE)
    monkeypatch.setitem(onnx_ops.OPS, "Relu", lambda attrs, x: x[0])   # a wrong op: the check must notice
    with pytest.raises(WorkbenchError, match="differs from ONNX Runtime"):
        convert(model, [X])

    def misfit(attrs, x):
        raise ValueError("expected 4D input (got 2D input)")

    monkeypatch.setitem(onnx_ops.OPS, "Relu", misfit)                   # one that cannot run: one clear line
    with pytest.raises(WorkbenchError, match=r"^the converted model does not run \(ValueError: expected 4D input"):
        convert(model, [X])


def test_the_converted_module_trains_and_keeps_constants_fixed():
    model = _legacy(random_init(TinyResNet()))
    module = convert(model, [X]).module.train()
    trainable = sum(p.numel() for p in module.parameters())
    assert trainable == sum(numpy_helper.to_array(t).size for t in model.graph.initializer
                            if numpy_helper.to_array(t).dtype.kind == "f")
    loss = module(torch.from_numpy(X)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in module.parameters())


def test_a_weight_two_nodes_read_and_float_math_on_sizes_stay_plain_functions():
    """Tied weights (one initializer, two MatMuls) are not owned by a layer, and a scale computed from the input's
    size (Sqrt(Cast(Shape(x)[-1]))) is float arithmetic: both must compute what ONNX Runtime computes."""
    w = np.random.default_rng(2).normal(size=(64, 64)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["h2"]),
             helper.make_node("Shape", ["h2"], ["shape"]), helper.make_node("Gather", ["shape", "last"], ["width"]),
             helper.make_node("Cast", ["width"], ["widthf"], to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["widthf"], ["scale"]), helper.make_node("Div", ["h2", "scale"], ["out"])]
    model = _graph(nodes, {"w": w, "last": np.array(-1, dtype=np.int64)})
    conversion = convert(model, [X.reshape(8, 64)])
    assert conversion.max_error < 1e-5 and conversion.layers == 0
    assert [n for n, _ in conversion.module.named_parameters()] == ["w"]    # one parameter, trained once
