"""Weight clustering and the packed format: shared values, zeros kept, exact round trips, real size."""

import copy
import gzip

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import workbench.clustering
from tests.conftest import FAST_MEASURE
from workbench.clustering import cluster_weights, finetune_centroids, kmeans_1d
from workbench.data import digits_splits
from workbench.errors import WorkbenchError
from workbench.export import export_onnx
from workbench.models import load_model
from workbench.packing import encode, pack, unpack
from workbench.pipeline import run_pipeline
from workbench.pruning import prune_torch, torch_weights
from workbench.specs import ClusterSpec, FinetuneSpec, ModelRef, PruneSpec, RunSpec
from workbench.stages import STAGE_RUNNERS, Context, Variant


def _nonzero_values(array: np.ndarray) -> np.ndarray:
    return np.unique(array[array != 0])


@pytest.fixture(scope="module")
def pruned_mlp():
    module = load_model(ModelRef(sample="digits-mlp")).module
    masks = prune_torch(module, PruneSpec(sparsity=0.9))
    return module, masks


def _ctx(splits=None) -> Context:
    return Context(RunSpec.from_dict({"model": "digits-mlp"}), splits or digits_splits(),
                   (torch.zeros(2, 1, 8, 8),), lambda f, msg: None, lambda: False)


def test_kmeans_1d_finds_separated_groups_and_handles_few_values():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 200) for c in (-1.0, 0.2, 3.0)])
    centroids, labels = kmeans_1d(values, 3)
    assert np.allclose(centroids, [-1.0, 0.2, 3.0], atol=0.01)
    assert np.allclose(centroids[labels], values, atol=0.05)
    outlier = np.concatenate([rng.normal(0, 0.01, 500), [50.0]])   # linear init leaves clusters empty
    centroids, labels = kmeans_1d(outlier, 8)
    assert len(centroids) == 8 and np.bincount(labels).min() >= 1 and centroids[labels[-1]] == 50.0
    few, few_labels = kmeans_1d(np.array([2.0, 1.0, 2.0]), 8)
    assert few.tolist() == [1.0, 2.0] and few[few_labels].tolist() == [2.0, 1.0, 2.0]


def test_clustering_keeps_zeros_and_at_most_k_values_per_layer(pruned_mlp):
    module, masks = pruned_mlp
    weights = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
    values, books = cluster_weights(weights, 16, seed=0, exclude=("fc3",))
    assert set(values) == set(books) == {"fc1.weight", "fc2.weight"}
    for name, clustered in values.items():
        assert clustered.shape == weights[name].shape and clustered.dtype == np.float32
        assert np.array_equal(clustered != 0, masks[name])          # pruned stay pruned, survivors stay
        assert len(_nonzero_values(clustered)) <= 16
        centroids, indices = books[name]
        assert np.array_equal(np.where(indices < 0, 0, centroids[indices]), clustered)
        assert np.array_equal(centroids.astype(np.float16).astype(np.float32), centroids)  # packs at 16 bits
        # each weight sits at its nearest shared value
        kept = weights[name][masks[name]]
        nearest = centroids[np.abs(kept[:, None] - centroids[None]).argmin(1)]
        assert np.allclose(clustered[masks[name]], nearest)
    with pytest.raises(WorkbenchError, match="clusters"):
        cluster_weights(weights, 1)


def test_pack_round_trips_every_mode_exactly():
    rng = np.random.default_rng(1)
    dense = rng.normal(size=(40, 30)).astype(np.float32)
    shared = np.where(rng.random((64, 3, 3)) < 0.2, rng.choice([-0.5, 0.25, 1.5], (64, 3, 3)), 0).astype(np.float32)
    tensors = {
        "dense": dense,                                           # raw (not float16-exact)
        "half_exact": dense.astype(np.float16).astype(np.float32),  # raw, stored at 16 bits
        "sparse": np.where(rng.random((50, 50)) < 0.1, rng.normal(size=(50, 50)), 0).astype(np.float32),
        "shared": shared,
        "f64": rng.normal(size=(20,)),
        "f16": rng.normal(size=(8, 8)).astype(np.float16),
        "ints": rng.integers(-3, 3, (9, 9)).astype(np.int64),
        "mask": rng.random((5, 5)) < 0.5,
        "all_zero": np.zeros((30, 40), np.float32),
        "all_one": np.ones((30, 40), np.float32),
        "with_nan": np.array([np.nan, 1.0, np.inf, 0.0], np.float32),
        "scalar": np.array(3.25, np.float32),
        "empty": np.zeros((0, 4), np.float32),
    }
    packed = encode(tensors)
    assert packed.modes["shared"] == "shared" and packed.modes["sparse"] == "sparse" and packed.modes["dense"] == "raw"
    assert sum(packed.sections.values()) == len(packed.data)
    decoded = unpack(packed.data)
    assert list(decoded) == list(tensors)
    for name, array in tensors.items():
        assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape, name
        assert np.array_equal(decoded[name], array, equal_nan=True), name
    half = len(pack({"w": tensors["half_exact"]}))
    assert half < len(pack({"w": dense})) / 1.9                  # float16-exact values are stored at 16 bits


@pytest.mark.parametrize("density", [0.001, 0.05, 0.5, 0.97])
def test_range_coder_round_trips_random_patterns_and_tables(density):
    rng = np.random.default_rng(int(density * 1000))
    table = rng.normal(size=256).astype(np.float16).astype(np.float32)
    for shape, values in (((300, 70), table), ((7, 3, 3, 3), table[:3]), ((4096,), table[:1])):
        array = np.where(rng.random(shape) < density, rng.choice(values, shape), 0).astype(np.float32)
        assert np.array_equal(unpack(pack({"a": array}))["a"], array)


def test_unpack_rejects_foreign_or_truncated_data():
    with pytest.raises(WorkbenchError, match="not a workbench packed file"):
        unpack(b"PK\x03\x04 not ours")
    data = pack({"w": np.arange(100, dtype=np.float32).reshape(10, 10)})
    with pytest.raises(WorkbenchError, match="truncated"):
        unpack(data[:-50])


def test_a_flipped_bit_anywhere_is_an_error_not_another_model():
    """A range coder decodes a flipped bit into other values without noticing: the CRC-32 at the end does."""
    rng = np.random.default_rng(4)
    weights = np.where(rng.random((60, 40)) < 0.1, rng.choice([-0.5, 0.25, 1.5], (60, 40)), 0).astype(np.float32)
    data = pack({"w": weights, "b": rng.normal(size=60).astype(np.float32)})
    for position in range(5, len(data)):   # every byte after the magic and version
        spoiled = bytearray(data)
        spoiled[position] ^= 1 << (position % 8)
        with pytest.raises(WorkbenchError, match="checksum mismatch"):
            unpack(bytes(spoiled))


def test_a_version_1_file_without_a_checksum_still_reads():
    weights = np.where(np.arange(400).reshape(20, 20) % 7 == 0, 0.5, 0).astype(np.float32)
    data = pack({"w": weights})
    old = data[:4] + b"\x01" + data[5:-4]    # what the workbench wrote before the checksum
    assert np.array_equal(unpack(old)["w"], weights)


def test_pruned_clustered_mlp_packs_far_below_gzip_of_the_fp32_onnx(pruned_mlp):
    module, masks = pruned_mlp
    base = load_model(ModelRef(sample="digits-mlp")).module
    onnx_bytes = export_onnx(base, (torch.zeros(2, 1, 8, 8),)).SerializeToString()
    weights = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
    values, _ = cluster_weights(weights, 16, seed=0)
    state = {n: t.numpy() for n, t in module.state_dict().items()}
    tensors = {**{n: a.astype(np.float16).astype(np.float32) for n, a in state.items()}, **values}
    blob = pack(tensors)
    decoded = unpack(blob)
    assert all(np.array_equal(decoded[n], tensors[n]) for n in tensors)
    gz = len(gzip.compress(onnx_bytes, 9))
    assert len(blob) * 4 < gz, (len(blob), gz)          # measured: ~6.2 KB vs ~41 KB
    assert len(onnx_bytes) / len(blob) > 25


def test_runner_on_a_torch_variant_writes_the_clustered_model(pruned_mlp):
    module, masks = pruned_mlp
    variant = Variant(module=module, masks=masks)
    out = STAGE_RUNNERS["cluster"](variant, ClusterSpec(clusters=8), _ctx())
    assert out.module is not module and out.masks.keys() == masks.keys() and out.packed
    assert "k=8 shared values per layer" in out.notes[0]
    decoded = unpack(out.packed)
    state = out.module.state_dict()
    for name, tensor in state.items():
        assert np.array_equal(decoded[name], tensor.numpy()), name   # the blob is exactly the measured model
    for name in torch_weights(out.module):
        assert len(_nonzero_values(decoded[name])) <= 8
        assert np.array_equal(decoded[name] != 0, masks[name])
    assert 0 <= out.history[0]["accuracy"] <= 1
    assert len(_nonzero_values(torch_weights(module)["fc1.weight"].detach().numpy())) > 8   # input untouched


def test_runner_on_an_onnx_variant(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    out = STAGE_RUNNERS["cluster"](Variant(onnx_model=model), ClusterSpec(clusters=4, exclude=("fc",)), _ctx())
    inits = {i.name: numpy_helper.to_array(i) for i in out.onnx_model.graph.initializer}
    assert len(_nonzero_values(inits["conv.weight"])) <= 4
    original_fc = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "fc.weight"))
    assert np.array_equal(inits["fc.weight"], original_fc.astype(np.float16).astype(np.float32))  # excluded: fp16
    decoded = unpack(out.packed)
    assert all(np.array_equal(decoded[n], a) for n, a in inits.items())
    assert "not clustered (float16): fc.weight" in out.notes[0]
    with pytest.raises(WorkbenchError, match="needs a torch model"):
        STAGE_RUNNERS["cluster"](Variant(onnx_model=model), ClusterSpec(finetune=FinetuneSpec(epochs=1)), _ctx())


def test_runner_shares_bias_values_and_tunes_centroids_when_the_spec_asks(pruned_mlp):
    module, masks = pruned_mlp
    spec = ClusterSpec(clusters=8, bias_clusters=4, finetune=FinetuneSpec(epochs=3, lr=1e-3, label_smoothing=0.1))
    out = STAGE_RUNNERS["cluster"](Variant(module=module, masks=masks), spec, _ctx())
    decoded = unpack(out.packed)
    assert len(_nonzero_values(decoded["fc1.bias"])) <= 4 and len(_nonzero_values(decoded["fc2.weight"])) <= 8
    assert all(np.array_equal(decoded[n], t.numpy()) for n, t in out.module.state_dict().items())
    assert np.array_equal(decoded["fc1.weight"] != 0, masks["fc1.weight"])
    assert [set(h) & {"clusters", "centroid_finetune_epochs"} for h in out.history] == [
        {"clusters"}, {"centroid_finetune_epochs"}]
    assert out.history[1]["accuracy"] > out.history[0]["accuracy"]    # 90% one-shot: tuning recovers a lot
    assert "biases/norms share 4 values per tensor" in out.notes[0]


def test_centroid_finetune_keeps_sharing_and_zeros(pruned_mlp):
    module, masks = pruned_mlp
    module = copy.deepcopy(module)
    weights = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
    values, books = cluster_weights(weights, 4, seed=0)
    workbench.clustering._write(module, values)
    tuned, loss = finetune_centroids(module, books, FinetuneSpec(epochs=2, lr=1e-3), digits_splits().train, masks)
    assert np.isfinite(loss)
    after = {n: p.detach().numpy() for n, p in torch_weights(module).items()}
    assert not module.fc1.__dict__.get("parametrizations")       # parametrization removed again
    for name, array in after.items():
        assert np.array_equal(array != 0, masks[name]) and len(_nonzero_values(array)) <= 4
        assert np.array_equal(np.where(tuned[name][1] < 0, 0, tuned[name][0][tuned[name][1]]), array)
        assert not np.array_equal(tuned[name][0], books[name][0])    # the shared values moved


def test_pipeline_reports_a_real_packed_size_and_writes_the_artifact(tmp_path):
    spec = RunSpec.from_dict({"model": "digits-mlp", "measure": FAST_MEASURE, "stages": [
        {"prune": {"sparsity": 0.9}}, {"finetune": {"epochs": 10, "lr": 0.01, "label_smoothing": 0.1}},
        {"cluster": {"clusters": 16, "bias_clusters": 64, "finetune": {"epochs": 2, "lr": 0.001}}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    final = report.final
    claim = next(c for c in final.claims if c.aspect == "packed size")
    assert claim.kind == "real" and claim.ratio > 25
    blob = (tmp_path / "weights.packed").read_bytes()
    assert len(blob) == final.facts.packed_bytes and report.artifacts["packed"] == "weights.packed"
    decoded = unpack(blob)
    assert len(_nonzero_values(decoded["fc2.weight"])) <= 16
    assert final.measurement.size.sparsity == pytest.approx(0.9, abs=0.01)
    tuned = report.variants[1].measurement.metrics["accuracy"]
    assert final.measurement.metrics["accuracy"] >= tuned - 0.01 > 0.9   # 16 shared values cost ~nothing
    assert not any(c.aspect == "packed size" for c in report.variants[0].claims)
    rows = report.summary_rows()   # the store's summary (Runs page, sweep summaries, the CLI table)
    assert rows[-1]["packed_kb"] == round(len(blob) / 1024, 1) and rows[-1]["packed_x"] == pytest.approx(claim.ratio,
                                                                                                        rel=0.01)
    assert "packed_kb" not in rows[1]   # only a variant that wrote weights.packed
    size = final.measurement.size
    assert size.storage_bits == 4     # a 16-value index, not the 32-bit float the file stores
    assert size.min_storage_bytes < report.variants[1].measurement.size.min_storage_bytes / 2
