"""Model page: layers, measured baseline and weight histogram; uploads are saved by content and a bad
one is one error line while the page keeps working."""

import numpy as np
import pytest

from tests.app_fixtures import chart_specs, fresh_app_env, metric, open_app, texts
from ui import uploads
from workbench.errors import WorkbenchError

PAGE = "views/model.py"


@pytest.fixture(autouse=True)
def app_env(monkeypatch, isolated_home):
    yield from fresh_app_env(monkeypatch, isolated_home)


def test_sample_model_shows_layers_baseline_and_histogram():
    at = open_app(PAGE)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert list(table["name"]) == ["fc1", "fc2", "fc3"] and table["params"].sum() == 50_200
    assert float(metric(at, "accuracy")) > 0.95
    assert next(m for m in at.metric if m.label == "accuracy").proto.help.startswith("95% interval 0.98")
    assert any("a change of fewer than 6 samples (1.67 pt here)" in c.value for c in at.caption)
    assert metric(at, "latency @ batch 1").endswith("ms") and metric(at, "latency @ batch 32").endswith("ms")
    assert metric(at, "gzipped").endswith("KB")
    (histogram,) = [s for s in chart_specs(at) if str(s.get("title", "")).startswith("Weight values")]
    assert histogram["mark"]["type"] == "bar" and histogram["encoding"]["y"]["scale"]["type"] == "log"


def test_bad_upload_is_one_error_line_and_the_page_keeps_working(isolated_home):
    at = open_app(PAGE)
    at.radio(key="model_source").set_value("Upload a model file").run()
    at.file_uploader(key="model_upload").upload("x.onnx", np.random.default_rng(0).bytes(4096)).run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("x.onnx: not a valid ONNX file") and "\n" not in error.value
    assert at.session_state["model_ref"] == {"sample": "digits-mlp"}  # the current model is unchanged
    assert list(at.dataframe[0].value["name"]) == ["fc1", "fc2", "fc3"]  # the rest of the page still renders
    assert len(list((isolated_home / "uploads").glob("*.onnx"))) == 1  # copied to disk at once
    at.radio(key="model_source").set_value("Sample model").run()
    at.selectbox[0].set_value("digits-cnn").run()
    assert not at.exception and not at.error and at.session_state["model_ref"] == {"sample": "digits-cnn"}


def test_onnx_upload_becomes_the_current_model(tiny_onnx):
    at = open_app(PAGE)
    at.radio(key="model_source").set_value("Upload a model file").run()
    at.file_uploader(key="model_upload").upload("tiny.onnx", tiny_onnx.read_bytes()).run()
    assert not at.exception and not at.error
    assert at.session_state["model_ref"]["path"].endswith(".onnx")
    assert any("tiny.onnx" in t for t in texts(at))  # the sidebar names the user's file, not the hash
    assert list(at.dataframe[0].value["name"]) == ["conv", "fc"]
    assert not [t for t in at.toggle if t.key == "eager"]          # an ONNX graph is never timed in torch eager
    assert any(c.value.startswith("Latency at batch 1, 32 with 1 ONNX Runtime thread, on this machine")
               for c in at.caption)
    assert any("Converts to torch modules for training and removing channels (2 Conv/Linear layers; outputs within"
               in t for t in texts(at))
    at.switch_page("views/compress.py").run()
    at.slider(key="sparsity").set_value(80).run()
    assert not at.exception and not at.error and metric(at, "sparsity") == "80.0%"


def test_an_onnx_graph_that_does_not_convert_says_so_on_the_model_page(einsum_onnx):
    at = open_app(PAGE)
    at.radio(key="model_source").set_value("Upload a model file").run()
    at.file_uploader(key="model_upload").upload("einsum.onnx", einsum_onnx.read_bytes()).run()
    assert not at.exception and not at.error    # no Conv/Gemm/MatMul layer: said, not a KeyError
    assert at.info[0].value.startswith("No Conv, Gemm or MatMul layer with its weights in the model")
    assert any(t.startswith("Does not convert to torch modules, so fine-tuning, structured pruning") and
               "the ONNX op Einsum (node 'mix') has no torch conversion" in t for t in texts(at))


def test_bad_data_upload_is_one_error_line():
    at = open_app(PAGE)
    at.radio(key="data_source").set_value("Upload .npz / .csv").run()
    at.file_uploader(key="data_upload").upload("eval.csv", b"a,b\n1,x\n").run()
    assert not at.exception
    assert [e.value for e in at.error] == ["eval.csv: all columns must be numeric (could not convert string to "
                                           "float: 'x')"]
    assert at.session_state["data_ref"] == {"builtin": "digits"}


def test_save_upload_names_files_by_content(tmp_path):
    first = uploads.save_upload(b"abc", "model.onnx", tmp_path, (".onnx",))
    again = uploads.save_upload(b"abc", "renamed.onnx", tmp_path, (".onnx",))
    assert first == again and first.name.startswith("ba7816bf") and first.read_bytes() == b"abc"
    assert uploads.display_name(first) == "renamed.onnx"
    with pytest.raises(WorkbenchError, match=r"^notes.txt: unsupported file type '.txt'"):
        uploads.save_upload(b"abc", "notes.txt", tmp_path, (".onnx",))
    with pytest.raises(WorkbenchError, match="the file is empty"):
        uploads.save_upload(b"", "m.onnx", tmp_path, (".onnx",))
    with pytest.raises(WorkbenchError, match=r"^w.safetensors: arch"):
        uploads.accept_model(b"not weights", "w.safetensors", tmp_path, arch=None)


def _npz(data, classes, labels=True) -> bytes:
    """Digits samples of `classes`, relabelled 0..k-1, as .npz bytes (flattened to 64 features)."""
    import io

    keep = np.isin(data.labels, classes)
    arrays = {"x": data.inputs[0][keep].reshape(-1, 64)}
    if labels:
        arrays["y"] = np.searchsorted(np.asarray(classes), data.labels[keep])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_training_file_lets_a_run_re_train_the_head_and_fine_tune_on_the_users_task(isolated_home):
    """Own evaluation data + a labelled training file: training knobs are allowed, the transfer is offered and
    the launched run re-trains the head on that file, fine-tunes, and succeeds."""
    from tests.app_fixtures import drain_queue, rerun_until
    from workbench.data import digits_splits
    from workbench.specs import RunSpec
    from workbench.store import Store

    splits, classes = digits_splits(), [2, 4, 6]
    at = open_app(PAGE)
    at.radio(key="data_source").set_value("Upload .npz / .csv").run()
    at.file_uploader(key="data_upload").upload("eval.npz", _npz(splits.test, classes)).run()
    assert any("runs cannot fine-tune" in t for t in texts(at))
    at.file_uploader(key="train_upload").upload("unlabelled.npz", _npz(splits.train, classes, labels=False)).run()
    assert [e.value for e in at.error] == ["unlabelled.npz: training data needs labels (a 'y' array in .npz, or a "
                                           "label column in .csv)"]
    assert "train_path" not in at.session_state["data_ref"]
    at.file_uploader(key="train_upload").upload("train.npz", _npz(splits.train, classes)).run()
    assert not at.exception and not at.error
    assert at.session_state["data_ref"]["train_path"].endswith(".npz") and at.query_params["train"].endswith(".npz")
    assert any("Training on **train.npz**" in t for t in texts(at))
    assert any("**Data** `eval.npz` · trains on `train.npz`" in t for t in texts(at))   # the sidebar

    at.switch_page("views/compress.py").run()
    at.slider(key="sparsity").set_value(50).run()
    at.slider(key="epochs").set_value(1).run()
    at.checkbox(key="retrain_head").check().run()
    assert any(t.startswith(f"The training file has {np.isin(splits.train.labels, classes).sum():,} samples in 3 "
                            "classes (labels 0..2)") for t in texts(at))
    assert not at.exception and not at.warning and "training data's classes" in next(
        t for t in texts(at) if "**transfer**" in t)
    at.button(key="launch_run").click().run()
    (run,) = Store(isolated_home).list()
    spec = RunSpec.from_dict(run.spec)
    assert [s.kind for s in spec.stages] == ["transfer", "prune", "finetune"] and spec.data.train_path
    drain_queue(isolated_home)
    rerun_until(at, lambda a: any(f"Run #{run.id}" in t and "succeeded" in t for t in texts(a)))
    done = Store(isolated_home).get(run.id)
    assert done.status == "succeeded", done.error
    baseline = done.metrics["rows"][0]
    assert baseline["variant"] == "baseline (after transfer)" and baseline["accuracy"] > 0.9  # 3 classes, not 10

    at.switch_page(PAGE).run()      # the uploader is empty again; the training file is still in use
    at.button(key="drop_train").click().run()
    assert "train_path" not in at.session_state["data_ref"] and "train" not in at.query_params
    at.switch_page("views/compress.py").run()
    assert not at.session_state["retrain_head"]    # no hidden transfer left behind; the recovery slider is shown
    assert [w.value.split(";")[0] for w in at.warning] == ["recovery fine-tuning needs training data"]
    assert any("Add a labelled training file" in t for t in texts(at))


def test_a_pt2_upload_says_which_methods_work_on_it(tmp_path):
    import torch

    from workbench.zoo import load_sample

    path = tmp_path / "mlp.pt2"
    program = torch.export.export(load_sample("digits-mlp").eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    at = open_app(PAGE)
    at.radio(key="model_source").set_value("Upload a model file").run()
    at.file_uploader(key="model_upload").upload("mlp.pt2", path.read_bytes()).run()
    assert not at.exception and not at.error
    assert any(t.startswith("This is a torch.export program (.pt2): unstructured pruning, fine-tuning, clustering "
                            "and quantization work on it as it is.") and "converts it to them through its ONNX export"
               in t for t in texts(at))
    assert float(metric(at, "accuracy")) > 0.95     # the baseline runs (it used to fail at the export)


def test_a_shared_link_brings_the_training_file_back(isolated_home):
    from workbench.data import digits_splits

    splits = digits_splits()
    folder = isolated_home / "uploads"
    evaluation = uploads.save_upload(_npz(splits.test, [0, 1]), "eval.npz", folder, uploads.DATA_SUFFIXES)
    training = uploads.save_upload(_npz(splits.train, [0, 1]), "train.npz", folder, uploads.DATA_SUFFIXES)
    at = open_app(PAGE, query={"data": evaluation.name, "train": training.name})
    assert not at.exception
    assert at.session_state["data_ref"] == {"path": str(evaluation), "train_path": str(training)}
    assert any("**Data** `eval.npz` · trains on `train.npz`" in t for t in texts(at))
    bogus = open_app(PAGE, query={"data": evaluation.name, "train": "0" * 64 + ".npz"})   # not uploaded here
    assert bogus.session_state["data_ref"] == {"path": str(evaluation)}


def test_measurement_settings_remeasure_the_baseline_and_go_into_launched_runs(isolated_home):
    from tests.test_app_compress import launched_spec

    at = open_app(PAGE)
    assert any(c.value.startswith("Latency at batch 1, 32 with 1 ONNX Runtime thread, torch eager too")
               for c in at.caption)
    at.multiselect(key="batch").set_value([8, 1]).run()
    at.toggle(key="eager").set_value(False).run()
    assert not at.exception and not at.error
    assert metric(at, "latency @ batch 8").endswith("ms") and not [m for m in at.metric if "32" in m.label]
    assert any(c.value.startswith("Latency at batch 1, 8 with 1 ONNX Runtime thread, on this machine")
               for c in at.caption)
    assert not any(c.value.startswith("torch eager, for reference") for c in at.caption)
    at.switch_page("views/compress.py").run()     # the same widgets, kept across pages
    assert at.multiselect(key="batch").value == [8, 1] and at.toggle(key="eager").value is False
    measure = launched_spec(at, isolated_home).measure
    assert measure.batch_sizes == (1, 8) and measure.threads == 1 and not measure.torch_eager


def test_a_shared_link_carries_the_measurement_settings(isolated_home):
    from tests.test_app_compress import launched_spec

    at = open_app("views/compress.py", query={"batch": ["1", "64"], "eager": "false"})
    assert not at.exception
    measure = launched_spec(at, isolated_home).measure
    assert measure.batch_sizes == (1, 64) and not measure.torch_eager


def test_npz_arrays_named_after_the_model_inputs_are_accepted(tmp_path):
    from tests.test_multi_input import _two_input_model

    w = _two_input_model(tmp_path / "two.onnx", name="features")
    rng = np.random.default_rng(1)
    features, ids = rng.normal(size=(40, 8)).astype(np.float32), rng.integers(0, 3, size=(40, 1))
    np.savez(tmp_path / "data.npz", features=features, ids=ids, y=((features + ids) @ w).argmax(1))
    at = open_app(PAGE)
    at.radio(key="model_source").set_value("Upload a model file").run()
    at.file_uploader(key="model_upload").upload("two.onnx", (tmp_path / "two.onnx").read_bytes()).run()
    at.radio(key="data_source").set_value("Upload .npz / .csv").run()
    at.file_uploader(key="data_upload").upload("data.npz", (tmp_path / "data.npz").read_bytes()).run()
    assert not at.exception and not at.error
    assert at.session_state["data_ref"]["path"].endswith(".npz")
    assert float(metric(at, "accuracy")) == 1.0      # both inputs fed, by name
