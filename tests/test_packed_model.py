"""workbench.packed_model: a clustered run's graph.onnx + weights.packed restore its model.onnx exactly, and the
packed claim counts the network too."""

from __future__ import annotations

import gzip

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from tests.conftest import FAST_MEASURE
from workbench.cli import main
from workbench.data import digits_splits
from workbench.errors import WorkbenchError
from workbench.packed_model import restore, split_graph
from workbench.packing import pack, unpack
from workbench.pipeline import run_pipeline
from workbench.specs import RunSpec


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    out = tmp_path_factory.mktemp("clustered")
    spec = RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE, "stages": [
        {"prune": {"sparsity": 0.9}}, {"cluster": {"clusters": 8, "bias_clusters": 16}}]})
    return run_pipeline(spec, out_dir=out), out


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def outputs(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: digits_splits().test.inputs[0]})[0]


def test_graph_and_packed_weights_restore_the_measured_model(clustered):
    report, out = clustered
    assert report.artifacts["graph"] == "graph.onnx"
    model, graph, packed = (onnx.load(str(out / "model.onnx")), (out / "graph.onnx").read_bytes(),
                            (out / "weights.packed").read_bytes())
    restored = restore(graph, packed)
    want, got = initializers(model), initializers(restored)
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    assert np.array_equal(outputs(restored), outputs(model))
    assert len(graph) < len((out / "model.onnx").read_bytes()) / 20   # the weights are what moved out
    assert {i.name for i in onnx.load_from_string(graph).graph.initializer if not i.raw_data} == set(unpack(packed))


def test_the_packed_claim_counts_the_network_beside_the_weights(clustered):
    report, out = clustered
    claim = next(c for c in report.final.claims if c.aspect == "packed size")
    graph_gz = len(gzip.compress((out / "graph.onnx").read_bytes(), 9, mtime=0))
    total = report.final.facts.packed_bytes + graph_gz
    assert report.final.facts.graph_gzip_bytes == graph_gz
    assert f"the whole model is {total:,} bytes" in claim.reason and "workbench unpack" in claim.reason


def test_an_initializer_the_packed_weights_do_not_hold_exactly_keeps_its_data(clustered):
    _, out = clustered
    model = onnx.load(str(out / "model.onnx"))
    tensors = unpack((out / "weights.packed").read_bytes())
    tensors["fc1.weight"] = tensors["fc1.weight"] + 1.0   # as when the exporter folds BatchNorm into a weight
    graph = split_graph(model, tensors)
    kept = {i.name for i in onnx.load_from_string(graph).graph.initializer if i.raw_data}
    assert "fc1.weight" in kept and "fc2.weight" not in kept
    restored = initializers(restore(graph, pack(tensors)))
    assert np.array_equal(restored["fc1.weight"], initializers(model)["fc1.weight"])   # never changed


def test_unpack_on_the_command_line_and_its_clear_errors(clustered, tmp_path, capsys):
    _, out = clustered
    graph, packed = str(out / "graph.onnx"), str(out / "weights.packed")
    main(["unpack", graph, packed, "-o", str(tmp_path / "restored.onnx")])
    assert "wrote" in capsys.readouterr().out
    restored, model = onnx.load(str(tmp_path / "restored.onnx")), onnx.load(str(out / "model.onnx"))
    assert np.array_equal(outputs(restored), outputs(model))
    other = tmp_path / "other.packed"
    other.write_bytes(pack({"fc1.weight": np.zeros((3, 3), np.float32)}))
    corrupt = tmp_path / "corrupt.packed"
    corrupt.write_bytes((out / "weights.packed").read_bytes()[:200])
    for args, message in (([graph, str(other)], "are the two files from the same run?"),
                          ([graph, str(corrupt)], "truncated"),
                          ([str(out / "model.onnx"), packed], "not a graph written beside a weights.packed"),
                          ([packed, packed], "graph.onnx: not an ONNX model"),
                          ([str(tmp_path / "nowhere.onnx"), packed], "file not found")):
        with pytest.raises(SystemExit):
            main(["unpack", *args, "-o", str(tmp_path / "bad.onnx")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.onnx").exists()


def test_restore_refuses_a_stub_its_packed_weights_lack():
    with pytest.raises(WorkbenchError, match="no 'w'"):
        model = onnx.helper.make_model(onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["w"], ["y"])], "g", [],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
            [numpy_helper.from_array(np.ones(2, np.float32), "w")]))
        restore(split_graph(model, {"w": np.ones(2, np.float32)}), pack({"v": np.ones(2, np.float32)}))


def test_restore_refuses_a_graph_edited_after_it_was_written(clustered):
    _, out = clustered
    packed = (out / "weights.packed").read_bytes()
    graph = onnx.load_from_string((out / "graph.onnx").read_bytes())
    first = graph.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(unpack(packed)[first.name], first.name))   # one stub filled by hand
    with pytest.raises(WorkbenchError, match="the file was changed"):
        restore(graph.SerializeToString(), packed)
