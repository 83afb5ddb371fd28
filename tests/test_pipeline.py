"""End to end: recipe -> variants measured alike -> claims -> artifacts."""

import json

import numpy as np
import pytest
import torch

from tests.conftest import FAST_MEASURE
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session
from workbench.pipeline import run_pipeline
from workbench.significance import unpack_answers
from workbench.specs import RunSpec
from workbench.stages import Cancelled


def _spec(model, stages, **extra) -> RunSpec:
    return RunSpec.from_dict({"model": model, "stages": stages, "measure": FAST_MEASURE, **extra})


@pytest.fixture(scope="module")
def mlp_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    seen = []
    spec = _spec("digits-mlp", [{"prune": {"sparsity": 0.9}}, {"finetune": {"epochs": 2}},
                                {"quantize": {"method": "static"}}])
    report = run_pipeline(spec, progress=lambda f, stage, msg: seen.append(f), out_dir=out)
    return report, out, seen


def _claim(variant, aspect):
    return next(c for c in variant.claims if c.aspect == aspect)


def test_pruned_fp32_says_file_and_latency_did_not_improve_and_why(mlp_report):
    report, _, _ = mlp_report
    pruned = report.variants[0]
    assert pruned.measurement.size.sparsity == pytest.approx(0.9, abs=0.01)
    assert pruned.measurement.size.file_bytes == pytest.approx(report.baseline.measurement.size.file_bytes, rel=0.01)
    size = _claim(pruned, "file size")
    assert size.kind == "none" and "stored densely" in size.reason
    for claim in (c for c in pruned.claims if c.aspect.startswith("latency")):
        assert claim.kind == "none" and "no sparse kernel" in claim.reason
    assert _claim(pruned, "compressed size").kind == "real"
    assert _claim(pruned, "minimum storage").kind == "estimate"
    assert report.baseline.measurement.macs == pruned.measurement.macs == 64 * 300 + 300 * 100 + 100 * 10  # dense


def test_int8_variant_is_really_smaller_and_quantized(mlp_report):
    report, _, _ = mlp_report
    final = report.final
    assert final.facts.quant_method == "static"
    assert final.measurement.coverage.quantized == 3 and final.measurement.coverage.float_ops == 0
    assert final.measurement.size.bits_per_weight == 8
    assert _claim(final, "file size").kind == "real"
    assert final.measurement.torch_latency == ()  # no torch model after quantization
    assert report.baseline.measurement.torch_latency  # torch eager shown beside ORT for the baseline


def test_every_variant_is_measured_alike(mlp_report):
    report, _, _ = mlp_report
    for v in (report.baseline, *report.variants):
        m = v.measurement
        assert [s.batch_size for s in m.latency] == [1, 32]
        assert {s.threads for s in m.latency} == {1}
        assert m.eval_samples == 360 and "accuracy" in m.metrics


def test_each_accuracy_change_is_counted_sample_by_sample_against_the_baseline(mlp_report):
    report, out, _ = mlp_report
    base = report.baseline.measurement
    assert base.paired is None   # nothing to pair the baseline with
    for m in (base, *(v.measurement for v in report.variants)):   # which samples each got right, one bit each
        assert unpack_answers(m.answers, 360).mean() == pytest.approx(m.metrics["accuracy"])
        assert [c for c, _, _ in m.classes] == list(range(10)) and sum(n for _, n, _ in m.classes) == 360
        assert sum(right for _, _, right in m.classes) == round(360 * m.metrics["accuracy"])
    saved = json.loads((out / "report.json").read_text())
    for i, v in enumerate(report.variants):
        paired = v.measurement.paired
        assert paired.samples == 360 and paired.worse + paired.better > 0   # 90% one-shot moves some answers
        net = (paired.better - paired.worse) / paired.samples
        assert net == pytest.approx(v.measurement.metrics["accuracy"] - base.metrics["accuracy"])
        assert paired.sentence() in _claim(v, "accuracy").reason and "McNemar" in _claim(v, "accuracy").reason
        assert saved["variants"][i]["measurement"]["paired"]["worse"] == paired.worse
    rows = report.summary_rows()
    assert "acc_change" not in rows[0] and rows[1]["acc_change"] == report.variants[0].measurement.paired.verdict
    assert list(rows[1])[:3] == ["variant", "accuracy", "acc_change"]


def test_the_text_report_names_the_classes_that_lost_most(mlp_report):
    from types import SimpleNamespace

    from workbench.report import classes_lost, render_text

    base = SimpleNamespace(classes=((0, 36, 36), (1, 36, 35), (2, 35, 35), (3, 37, 30)))
    var = SimpleNamespace(classes=((0, 36, 36), (1, 36, 30), (2, 35, 34), (3, 37, 33)))
    assert classes_lost(base, var) == "1 (-5 of 36), 2 (-1 of 35)"     # worst first; gains are not listed
    assert classes_lost(base, base) == ""
    report, _, _ = mlp_report
    pruned = report.variants[0]     # 90% one-shot: some classes fall
    expected = classes_lost(report.baseline.measurement, pruned.measurement)
    assert expected and f"  classes that lost most: {expected}" in render_text(report)


def test_artifacts_and_progress(mlp_report):
    report, out, seen = mlp_report
    saved = json.loads((out / "report.json").read_text())
    assert saved["variants"][-1]["measurement"]["metrics"] == report.final.measurement.metrics
    assert saved["environment"]["cpu_flags"]
    assert RunSpec.from_dict(saved["spec"]).stages[0].sparsity == 0.9
    session = make_session(str(out / "model.onnx"))
    assert session.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert not list(out.glob(".*"))  # no temp files left behind
    assert "torch" not in report.artifacts and not (out / "model.pt2").exists()   # int8 lives in ONNX only


def test_a_run_that_ends_as_a_torch_model_also_writes_it_as_model_pt2(tmp_path):
    from workbench.data import digits_splits
    from workbench.evaluate import score, torch_predict
    from workbench.models import load_model
    from workbench.specs import ModelRef

    spec = _spec("digits-cnn", [{"structured": {"ratio": 0.5}}])
    report = run_pipeline(spec, out_dir=tmp_path)
    assert report.artifacts["torch"] == "model.pt2"
    loaded = load_model(ModelRef(path=str(tmp_path / "model.pt2")))   # the workbench's own .pt2 checks pass
    assert sum(p.numel() for p in loaded.module.parameters()) == report.variants[0].history[0]["params_after"]
    test = digits_splits().test
    assert score(torch_predict(loaded.module, test), test.labels)["accuracy"] == pytest.approx(
        report.final.measurement.metrics["accuracy"], abs=1 / 360)    # ORT and torch may differ by a sample
    assert loaded.module(torch.zeros(1, 1, 8, 8)).shape == (1, 10)    # batch 1 too


def test_a_module_torch_export_cannot_trace_is_a_clear_error(tmp_path):
    from workbench.export import export_program
    from workbench.zoo import load_sample

    scripted = torch.jit.script(load_sample("digits-mlp").eval())
    with pytest.raises(WorkbenchError, match="torch.export failed"):
        export_program(scripted, (torch.zeros(2, 1, 8, 8),))


def test_onnx_upload_with_unlabelled_data_reports_fidelity(tiny_onnx, tmp_path):
    data = tmp_path / "inputs.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 64), dtype=np.float32))
    spec = _spec({"path": str(tiny_onnx)}, [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "dynamic"}}],
                 data={"path": str(data)})
    report = run_pipeline(spec)
    metrics = report.variants[0].measurement.metrics
    assert set(metrics) == {"top1_agreement", "output_mse", "output_cosine"}
    assert 0 < metrics["top1_agreement"] <= 1 and metrics["output_mse"] > 0
    assert report.baseline.measurement.metrics == {}  # the reference itself
    assert report.variants[0].measurement.paired is None and report.variants[0].measurement.answers is None
    assert report.final.measurement.coverage.histogram.get("MatMulInteger") or \
        report.final.measurement.coverage.histogram.get("DynamicQuantizeMatMul")


def test_an_onnx_upload_trains_through_its_torch_conversion_and_is_measured_as_uploaded(tiny_onnx):
    """Structured pruning and fine-tuning need torch modules: the run converts the graph (workbench.onnx_torch),
    says so, measures the uploaded graph itself as the baseline, and the variants' layers really shrink."""
    import onnx

    spec = _spec({"path": str(tiny_onnx)}, [{"structured": {"ratio": 0.5}}, {"finetune": {"epochs": 1}}])
    report = run_pipeline(spec)
    (note,) = report.baseline.notes
    assert note.startswith("converted to torch modules from the ONNX graph for training and layer edits (2 Conv/Linear")
    uploaded = onnx.load(str(tiny_onnx))
    assert report.baseline.measurement.size.file_bytes == len(uploaded.SerializeToString())
    assert all(not v.measurement.torch_latency for v in (report.baseline, *report.variants))  # ORT timing only
    structured, tuned = report.variants
    assert structured.measurement.size.params < 0.6 * report.baseline.measurement.size.params
    assert tuned.measurement.size.params == structured.measurement.size.params
    assert tuned.measurement.metrics["accuracy"] > structured.measurement.metrics["accuracy"]


def test_an_onnx_upload_with_a_fixed_batch_of_1_trains_and_its_variants_take_any_batch(tmp_path):
    import onnx

    from tests.test_onnx_torch import _legacy
    from workbench import zoo

    path = tmp_path / "cnn-batch1.onnx"
    onnx.save(_legacy(zoo.load_sample("digits-cnn"), batch=1), str(path))
    report = run_pipeline(_spec({"path": str(path)}, [{"structured": {"ratio": 0.5}}, {"finetune": {"epochs": 1}}]))
    assert [s.batch_size for s in report.baseline.measurement.latency] == [1]    # the upload runs batch 1 only
    assert [s.batch_size for s in report.final.measurement.latency] == [1, 32]   # the exported variants any
    assert report.final.measurement.metrics["accuracy"] > 0.9


def test_an_onnx_upload_with_graph_only_stages_is_not_converted(tiny_onnx):
    report = run_pipeline(_spec({"path": str(tiny_onnx)}, [{"prune": {"sparsity": 0.5}}]))
    assert report.baseline.notes == () and not any("converted" in n for n in report.variants[0].notes)


def test_finetune_after_quantize_is_a_clear_error():
    spec = _spec("digits-mlp", [{"quantize": {"method": "dynamic"}}, {"finetune": {"epochs": 1}}])
    with pytest.raises(WorkbenchError, match="finetune: needs a torch model"):
        run_pipeline(spec)


def test_cancel_stops_between_stages():
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        run_pipeline(_spec("digits-mlp", [{"prune": {"sparsity": 0.5}}, {"quantize": {}}]), cancel=cancel)


def test_fake_quant_is_labelled_simulated():
    report = run_pipeline(_spec("digits-mlp", [{"quantize": {"method": "fake", "weight_bits": 3}}]))
    final = report.final
    assert final.facts.simulated_quant
    assert _claim(final, "file size").kind == "simulated"
    assert _claim(final, "accuracy").kind == "simulated"
    assert final.measurement.size.storage_bits == 3
    assert final.measurement.size.min_storage_bytes < report.baseline.measurement.size.file_bytes / 8


def test_data_classes_keep_those_samples_relabelled_in_the_given_order():
    from workbench.data import digits_splits
    from workbench.models import load_model
    from workbench.pipeline import load_splits

    spec = _spec("digits-mlp", [], data={"builtin": "digits", "classes": [9, 2, 5]})
    splits, full = load_splits(spec, load_model(spec.model)), digits_splits()
    for part, whole in ((splits.train, full.train), (splits.calib, full.calib), (splits.test, full.test)):
        assert sorted(set(part.labels)) == [0, 1, 2]
        for new, old in enumerate((9, 2, 5)):
            assert np.array_equal(part.inputs[0][part.labels == new].reshape(-1, 64),
                                  whole.inputs[0][whole.labels == old].reshape(-1, 64))
    missing = _spec("digits-mlp", [], data={"builtin": "digits", "classes": [3, 11]})
    with pytest.raises(WorkbenchError, match="data.classes: class 11 has no samples in digits/train"):
        load_splits(missing, load_model(missing.model))


def test_user_training_file_calibrates_and_a_misfit_one_is_refused_up_front(tmp_path):
    """With a training file, calibration samples come from it (spread over a class-sorted file), never from
    the data that is scored; a training file without labels, or shaped unlike the evaluation data, stops
    the run before anything is computed."""
    from workbench.data import digits_splits
    from workbench.models import load_model
    from workbench.pipeline import load_splits

    s = digits_splits()
    order = np.argsort(s.train.labels, kind="stable")   # sorted by class: the first rows are all zeros
    x, y = s.train.inputs[0][order].reshape(-1, 64), s.train.labels[order]
    np.savez(tmp_path / "test.npz", x=s.test.inputs[0].reshape(-1, 64), y=s.test.labels)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    data = {"path": str(tmp_path / "test.npz"), "train_path": str(tmp_path / "train.npz")}
    spec = _spec("digits-mlp", [], data=data)
    splits = load_splits(spec, load_model(spec.model))
    assert len(splits.train) == len(splits.calib) == len(y)
    assert sorted(set(splits.calib.take(128).labels)) == list(range(10))   # a prefix is not just the first rows
    for name, arrays, message in (("nolabels.npz", {"x": x}, "nolabels.npz: training data needs labels"),
                                  ("wide.npz", {"x": np.zeros((4, 65), np.float32), "y": np.zeros(4, int)},
                                   r"wide.npz: samples have shape \(65,\), the evaluation data's \(test.npz\) "
                                   r"\(64,\)")):
        np.savez(tmp_path / name, **arrays)
        bad = _spec("digits-mlp", [], data={**data, "train_path": str(tmp_path / name)})
        with pytest.raises(WorkbenchError, match=message):
            load_splits(bad, load_model(bad.model))


def test_an_evaluation_file_sorted_by_class_calibrates_and_subsamples_over_every_class(tmp_path):
    """Without a training file, calibration (which takes a prefix) reads a shuffled copy of the evaluation file,
    and `max_samples` scores a fixed random draw: the first rows of a sorted file are all one class."""
    from workbench.data import digits_splits
    from workbench.models import load_model
    from workbench.pipeline import load_splits

    s = digits_splits()
    order = np.argsort(s.test.labels, kind="stable")
    np.savez(tmp_path / "sorted.npz", x=s.test.inputs[0][order].reshape(-1, 64), y=s.test.labels[order])
    spec = _spec("digits-mlp", [], data={"path": str(tmp_path / "sorted.npz")})
    splits = load_splits(spec, load_model(spec.model))
    assert sorted(set(splits.calib.take(128).labels)) == list(range(10))
    assert np.array_equal(splits.test.labels, s.test.labels[order])        # what is scored keeps its order
    drawn = _spec("digits-mlp", [], data={"path": str(tmp_path / "sorted.npz"), "max_samples": 50})
    first = load_splits(drawn, load_model(drawn.model)).test
    assert len(first) == 50 and sorted(set(first.labels)) == list(range(10))
    assert np.array_equal(first.labels, load_splits(drawn, load_model(drawn.model)).test.labels)   # fixed draw
    everything = _spec("digits-mlp", [], data={"path": str(tmp_path / "sorted.npz"), "max_samples": 5000})
    assert np.array_equal(load_splits(everything, load_model(everything.model)).test.labels, s.test.labels[order])


def test_static_int8_says_when_it_calibrated_on_the_data_it_is_scored_on(tmp_path):
    from workbench.data import digits_splits

    s = digits_splits()
    np.savez(tmp_path / "test.npz", x=s.test.inputs[0].reshape(-1, 64), y=s.test.labels)
    np.savez(tmp_path / "train.npz", x=s.train.inputs[0].reshape(-1, 64), y=s.train.labels)
    stages = [{"quantize": {"method": "static"}}]
    alone = run_pipeline(_spec("digits-mlp", stages, data={"path": str(tmp_path / "test.npz")}))
    assert any(n.startswith("calibrated on the evaluation data itself (test.npz)")
               for n in alone.final.notes)
    trained = run_pipeline(_spec("digits-mlp", stages, data={"path": str(tmp_path / "test.npz"),
                                                            "train_path": str(tmp_path / "train.npz")}))
    assert not any("evaluation data itself" in n for n in trained.final.notes)
    assert not any("evaluation data itself" in n for n in run_pipeline(_spec("digits-mlp", stages)).final.notes)


def test_first_stage_transfer_becomes_the_baseline_and_later_stages_compare_with_it(tmp_path):
    from workbench.compare import report_row
    from workbench.report import render_text
    from workbench.specs import stage_dict

    spec = _spec("digits-mlp", [{"transfer": {"epochs": 5}}, {"quantize": {"method": "dynamic"}}],
                 data={"builtin": "digits", "classes": [9, 8, 7, 6, 5]})
    report = run_pipeline(spec, out_dir=tmp_path)
    base = report.baseline
    assert base.name == "baseline (after transfer)" and base.stage == stage_dict(spec.stages[0])
    assert base.history[-1]["epoch"] == 5 and any("Linear(100->10) -> Linear(100->5)" in n for n in base.notes)
    assert base.measurement.metrics["accuracy"] >= 0.95  # measured on the new task, with the new head
    assert [v.name for v in report.variants] == ["2: quantize"]
    assert _claim(report.final, "file size").kind == "real"
    saved = json.loads((tmp_path / "report.json").read_text())
    assert set(saved["baseline"]) == set(saved["variants"][0])  # same fields as before, readers unchanged
    assert report_row(saved)["base_accuracy"] == base.measurement.metrics["accuracy"]
    assert "baseline (after transfer)\n  note: head fc3 replaced" in render_text(report)
    session = make_session(str(tmp_path / "model.onnx"))
    assert session.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 5)


def test_transfer_later_in_the_run_is_measured_as_a_variant():
    spec = _spec("digits-mlp", [{"prune": {"sparsity": 0.5}}, {"transfer": {"epochs": 2}}],
                 data={"builtin": "digits", "classes": [0, 1, 2]})
    report = run_pipeline(spec)
    assert report.baseline.name == "baseline" and report.baseline.notes == ()
    transfer = report.variants[1]
    assert transfer.name == "2: transfer" and any("measured as a variant" in n for n in transfer.notes)
    assert transfer.measurement.metrics["accuracy"] >= 0.9


def test_recovery_can_distill_from_the_runs_original_model():
    report = run_pipeline(_spec("digits-mlp", [{"prune": {"sparsity": 0.8}},
                                               {"finetune": {"epochs": 2, "lr": 0.01, "distill": 0.7}}]))
    assert report.final.stage == {"finetune": {"epochs": 2, "lr": 0.01, "batch_size": 64, "schedule": "cosine",
                                               "label_smoothing": 0.0, "seed": 0, "distill": 0.7,
                                               "temperature": 4.0}}
    assert report.final.measurement.metrics["accuracy"] > report.variants[0].measurement.metrics["accuracy"]
