"""Loading user models: every supported format, and bad files give one-line errors that name them."""

import dataclasses
import pickle
import re

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.specs import ModelRef
from workbench.summary import summarize, summarize_onnx
from workbench.zoo import build


class Sentinel:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _one_line_error(ref: ModelRef, name: str) -> str:
    with pytest.raises(WorkbenchError) as info:
        load_model(ref)
    message = str(info.value)
    assert name in message and "\n" not in message, message
    return message


def test_onnx_loads_and_summarizes(tiny_onnx):
    loaded = load_model(ModelRef(path=str(tiny_onnx)))
    assert loaded.kind == "onnx" and loaded.file_bytes == tiny_onnx.stat().st_size
    summary = summarize(loaded)
    assert [r.name for r in summary.layers] == ["conv", "fc"]
    assert summary.layers[0].macs == 8 * 6 * 6 * 9 and summary.layers[1].macs == 288 * 10
    assert summary.weight_params == 72 + 2880


def test_safetensors_with_builtin_arch_and_summary_matches_onnx(tmp_path):
    from workbench.export import export_onnx

    path = tmp_path / "cnn.safetensors"
    save_file(build("digits-cnn").state_dict(), str(path))
    loaded = load_model(ModelRef(path=str(path), arch="digits-cnn"))
    torch_summary = summarize(loaded)
    onnx_summary = summarize_onnx(export_onnx(loaded.module, (torch.zeros(2, 1, 8, 8),)), "cnn")
    assert torch_summary.total_macs == onnx_summary.total_macs > 0
    assert [r.params for r in torch_summary.layers] == [r.params for r in onnx_summary.layers]


def test_torch_export_program_loads(tmp_path):
    module = build("digits-mlp").eval()
    path = tmp_path / "mlp.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(module, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    loaded = load_model(ModelRef(path=str(path)))
    assert loaded.kind == "torch" and loaded.input_shape == (1, 8, 8)
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded.module(x), module(x), atol=1e-6)


def test_torchscript_loads(tmp_path):
    module = build("digits-mlp").eval()
    path = tmp_path / "mlp.ts"
    torch.jit.script(module).save(str(path))
    loaded = load_model(ModelRef(path=str(path), input_shape=(1, 8, 8)))
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded.module(x), module(x), atol=1e-6)


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".ts"])
def test_pickle_payload_is_never_unpickled(tmp_path, suffix):
    sentinel = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps(Sentinel(str(sentinel))))
    _one_line_error(ModelRef(path=str(path)), path.name)
    assert not sentinel.exists()


def test_pickle_inside_a_torch_save_zip_is_never_unpickled(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"x": Sentinel(str(sentinel))}, str(path))  # a zip archive, like TorchScript
    _one_line_error(ModelRef(path=str(path)), path.name)
    assert not sentinel.exists()


def test_truncated_and_random_onnx(tiny_onnx, tmp_path):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[:100])
    assert "not a valid ONNX" in _one_line_error(ModelRef(path=str(truncated)), "cut.onnx")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    _one_line_error(ModelRef(path=str(noise)), "noise.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert "empty" in _one_line_error(ModelRef(path=str(empty)), "empty.onnx")


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tiny_onnx, tmp_path, location):
    model = onnx.load(str(tiny_onnx))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    assert "outside" in _one_line_error(ModelRef(path=str(path)), "ext.onnx")


def test_safetensors_that_do_not_fit_the_arch(tmp_path):
    path = tmp_path / "bad.safetensors"
    state = build("digits-mlp").state_dict()
    state.pop("fc3.bias")
    save_file(state, str(path))
    assert "missing fc3.bias" in _one_line_error(ModelRef(path=str(path), arch="digits-mlp"), "bad.safetensors")


def test_missing_file():
    _one_line_error(ModelRef(path="/nonexistent/model.onnx"), "model.onnx")


@pytest.fixture(scope="module")
def traced_mlps(tmp_path_factory):
    """The digits-mlp sample as a torch.export program and as TorchScript, as users export them."""
    from workbench.zoo import load_sample

    folder, module = tmp_path_factory.mktemp("traced"), load_sample("digits-mlp").eval()
    example = (torch.zeros(2, 1, 8, 8),)
    program = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(folder / "mlp.pt2"))
    torch.jit.trace(module, example).save(str(folder / "mlp.pt"))
    return {"a torch.export program (.pt2)": folder / "mlp.pt2", "a TorchScript model (.pt/.ts)": folder / "mlp.pt"}


@pytest.mark.parametrize("kind", ["a torch.export program (.pt2)", "a TorchScript model (.pt/.ts)"])
def test_traced_models_prune_fine_tune_and_cluster_and_refuse_layer_edits_saying_what_works(traced_mlps, kind,
                                                                                              tmp_path):
    """torch.export modules raise on train()/eval() and a copied TorchScript module has non-leaf parameters:
    both used to fail any run (the .pt2 already at the baseline export). Now pruning + fine-tuning and
    clustering run; methods that edit Linear/Conv modules stop with one line saying what does work when handed
    the traced module, and a run converts it to modules through its ONNX export for them."""
    from tests.conftest import FAST_MEASURE
    from workbench.data import digits_splits
    from workbench.pipeline import example_inputs, run_pipeline
    from workbench.specs import (
        ClusterSpec,
        DistillSpec,
        FinetuneSpec,
        LowRankSpec,
        PruneSpec,
        QATSpec,
        RunSpec,
        StructuredSpec,
        TransferSpec,
    )
    from workbench.stages import STAGE_RUNNERS, Context, Variant

    def accuracies(model: dict) -> list[float]:
        spec = RunSpec.from_dict({"model": model, "measure": FAST_MEASURE, "stages": [
            {"prune": {"sparsity": 0.8}}, {"finetune": {"epochs": 1}}, {"cluster": {"clusters": 16}}]})
        report = run_pipeline(spec, out_dir=tmp_path / model.get("sample", "traced"))
        return [v.measurement.metrics["accuracy"] for v in (report.baseline, *report.variants)]

    model = {"path": str(traced_mlps[kind])}
    assert accuracies(model) == pytest.approx(accuracies({"sample": "digits-mlp"}), abs=0.003)  # as the module does
    module = load_model(ModelRef(**model)).module
    splits = digits_splits()
    ctx = Context(RunSpec.from_dict({"model": model, "measure": FAST_MEASURE}), splits, example_inputs(splits.test),
                  lambda *_: None, lambda: False)
    refusal = (rf"edits nn.Linear/Conv modules, and {re.escape(kind)} has none \(.*\)\. "
               "Unstructured pruning, fine-tuning, clustering")
    for stage in (StructuredSpec(), DistillSpec(), QATSpec(), TransferSpec(), LowRankSpec(),
                  PruneSpec(sparsity=0.5, reconstruct="refit")):   # TorchScript raised a RuntimeError here
        with pytest.raises(WorkbenchError, match=refusal):
            STAGE_RUNNERS[stage.kind](Variant(module=module), stage, ctx)
    # a run converts the model to modules through its ONNX export where a stage edits them (TorchScript: also
    # centroid fine-tuning), and measures that export as the baseline
    tuned = dataclasses.replace(ctx.spec, stages=(ClusterSpec(clusters=16, finetune=FinetuneSpec(epochs=1)),))
    report = run_pipeline(tuned)
    assert report.final.measurement.metrics["accuracy"] > 0.95
    assert bool(report.baseline.notes) == kind.startswith("a TorchScript")
    narrowed = run_pipeline(dataclasses.replace(ctx.spec, stages=(StructuredSpec(ratio=0.5), FinetuneSpec(epochs=2))))
    assert narrowed.baseline.notes[0].startswith("converted to torch modules from the ONNX graph")
    assert narrowed.final.measurement.size.params < 0.5 * narrowed.baseline.measurement.size.params
    assert narrowed.final.measurement.metrics["accuracy"] > 0.9


def test_a_program_exported_for_one_batch_size_says_how_to_export_it(tmp_path):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(build("digits-mlp").eval(), (torch.zeros(2, 1, 8, 8),)), str(path))
    with pytest.raises(WorkbenchError, match=r"^fixed.pt2: exported for batch size 2 only.*dynamic_shapes="):
        load_model(ModelRef(path=str(path)))


def test_a_program_exported_in_training_mode_says_to_call_eval_first(tmp_path):
    """BatchNorm in a train-mode export normalizes with each batch's statistics: at batch 1 the outputs are
    meaningless, so it is refused on load with the fix, instead of measuring a broken baseline."""
    path = tmp_path / "train.pt2"
    program = torch.export.export(build("digits-cnn").train(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    with pytest.raises(WorkbenchError, match=r"^train.pt2: exported in training mode .*call model.eval\(\) before"):
        load_model(ModelRef(path=str(path)))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")   # tracing BatchNorm in train mode warns
def test_torchscript_traced_in_training_mode_is_refused_and_scripted_is_switched_to_eval(tmp_path):
    """torch.jit.trace bakes the mode in as a constant; torch.jit.script reads self.training, so eval() works."""
    module = build("digits-cnn").train()
    torch.jit.trace(module, torch.rand(2, 1, 8, 8)).save(str(tmp_path / "traced.pt"))
    with pytest.raises(WorkbenchError, match=r"^traced.pt: traced in training mode .*before torch.jit.trace"):
        load_model(ModelRef(path=str(tmp_path / "traced.pt")))
    torch.jit.script(module).save(str(tmp_path / "scripted.pt"))
    loaded = load_model(ModelRef(path=str(tmp_path / "scripted.pt"), input_shape=(1, 8, 8)))
    x = torch.rand(3, 1, 8, 8)
    assert torch.allclose(loaded.module(x), module.eval()(x), atol=1e-5)
    torch.jit.trace(module.eval(), torch.rand(2, 1, 8, 8)).save(str(tmp_path / "eval.pt"))
    assert load_model(ModelRef(path=str(tmp_path / "eval.pt"))).kind == "torch"


def test_copying_an_exported_module_prints_no_torch_deprecation(traced_mlps):
    """Every stage copies its input module; for a .pt2 torch itself warned on each copy, on the user's terminal."""
    import warnings

    from workbench.models import copy_module

    module = load_model(ModelRef(path=str(traced_mlps["a torch.export program (.pt2)"]))).module
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        copied = copy_module(module)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(copied(x), module(x))


def test_fine_tuning_a_pt2_with_batchnorm_says_its_statistics_stay_fixed(tmp_path):
    from tests.conftest import FAST_MEASURE
    from workbench.pipeline import run_pipeline
    from workbench.specs import RunSpec

    path = tmp_path / "cnn.pt2"
    program = torch.export.export(build("digits-cnn").eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    spec = RunSpec.from_dict({"model": {"path": str(path)}, "measure": FAST_MEASURE,
                              "stages": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}]})
    pruned, tuned = run_pipeline(spec).variants
    assert not any("BatchNorm/dropout ops keep the mode" in n for n in pruned.notes)   # nothing trained there
    assert any(n.startswith("trained as a torch.export program (.pt2): its BatchNorm/dropout ops keep the mode")
               for n in tuned.notes)


def test_a_traced_model_summary_counts_macs_from_its_export(tmp_path):
    """A .pt2's modules are bare containers of traced ops (op 'Module', no MACs) and TorchScript takes no
    hooks: their layer table now gets op types and MACs from the ONNX export, equal to the module's own."""
    module = build("digits-cnn").eval()
    path = tmp_path / "cnn.pt2"
    program = torch.export.export(module, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("b")},))
    torch.export.save(program, str(path))
    torch.jit.script(module).save(str(tmp_path / "cnn.ts"))
    reference = summarize(load_model(ModelRef(sample="digits-cnn")))
    exported = summarize(load_model(ModelRef(path=str(path))))
    scripted = summarize(load_model(ModelRef(path=str(tmp_path / "cnn.ts"), input_shape=(1, 8, 8))))
    assert exported.total_macs == scripted.total_macs == reference.total_macs == 2_382_848
    assert [r.op_type for r in exported.layers] == ["Conv", "Conv", "Conv", "Gemm"]
    assert [r.op_type for r in scripted.layers] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert [r.macs for r in exported.layers] == [r.macs for r in reference.layers]
