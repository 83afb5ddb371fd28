"""workbench.presets: each method's knobs give the expected recipe stages, recipes read back, sweeps, problems."""

from pathlib import Path

import pytest

from workbench.jobs import expand_grid
from workbench.presets import PRESETS, RECOVERY_LRS, CompressSettings, preset_spec
from workbench.specs import (
    ClusterSpec,
    DataRef,
    FinetuneSpec,
    ModelRef,
    PruneSpec,
    QATSpec,
    RunSpec,
    SpecError,
    StructuredSpec,
    load_recipe,
)

MLP, VIT = ModelRef(sample="digits-mlp"), ModelRef(sample="digits-vit")


def kinds(settings: CompressSettings) -> list[str]:
    return [s.kind for s in settings.stages(MLP)]


def test_each_method_gives_its_stages():
    assert kinds(CompressSettings()) == []
    assert kinds(CompressSettings(sparsity=0.5, epochs=3, bits=8)) == ["prune", "finetune", "quantize"]
    assert kinds(CompressSettings(technique="nm", epochs=3)) == ["prune", "finetune"]
    assert kinds(CompressSettings(technique="structured", epochs=3)) == ["structured", "finetune"]
    assert kinds(CompressSettings(technique="distill", epochs=3)) == ["distill"]   # trains by itself
    assert kinds(CompressSettings(technique="lowrank", epochs=3)) == ["lowrank"]   # fine-tunes inside
    assert kinds(CompressSettings(sparsity=0.9, clusters=8, bits=32)) == ["prune", "cluster"]
    assert kinds(CompressSettings(bits=4, qat=True)) == ["qat"]
    assert kinds(CompressSettings(bits=16, qat=True)) == ["quantize"]        # QAT covers 2..8 bits only
    assert kinds(CompressSettings(classes=(5, 9), bits=8)) == ["transfer", "quantize"]


def test_stage_fields_follow_the_knobs():
    gradual = CompressSettings(sparsity=0.8, schedule="gradual", steps=5, rewind="weight", epochs=2).stages(MLP)[0]
    assert (gradual.schedule, gradual.steps, gradual.rewind, gradual.finetune.epochs) == ("gradual", 5, "weight", 2)
    untrained = CompressSettings(sparsity=0.8, schedule="iterative", rewind="weight").stages(MLP)[0]
    assert untrained.rewind == "lr" and untrained.finetune is None   # rewinding without training means nothing
    nm, tune = CompressSettings(technique="nm", method="random", epochs=2).stages(MLP)
    assert (nm.nm, nm.sparsity, nm.method, nm.schedule) == ("2:4", 0.5, "random", "oneshot") and tune.epochs == 2
    (structured,) = CompressSettings(technique="structured", ratio=0.3, round_to=8).stages(MLP)
    assert (structured.ratio, structured.round_to) == (0.3, 8)
    assert CompressSettings(technique="structured").method_stage.round_to == 8   # SIMD-friendly widths by default
    assert CompressSettings(technique="structured", round_to=None).method_stage.round_to is None
    (distill,) = CompressSettings(technique="distill", width=0.25, distill_epochs=12, init="random").stages(MLP)
    assert (distill.width, distill.epochs, distill.init) == (0.25, 12, "random")
    (lowrank,) = CompressSettings(technique="lowrank", energy=0.8, epochs=4).stages(MLP)
    assert lowrank.energy == 0.8 and lowrank.rank is None and lowrank.finetune.epochs == 4
    cluster = CompressSettings(sparsity=0.9, clusters=16, cluster_epochs=5).stages(MLP)[1]
    assert cluster.clusters == 16 and cluster.finetune.epochs == 5 and cluster.finetune.lr == pytest.approx(0.001)
    (qat,) = CompressSettings(bits=3, qat=True, qat_epochs=7, qat_act8=True).stages(MLP)
    assert (qat.weight_bits, qat.activation_bits, qat.epochs) == (3, 8, 7)
    spec = CompressSettings(classes=(5, 9)).to_spec(MLP, DataRef())
    assert spec.data.classes == (5, 9) and spec.stages[0].kind == "transfer"
    own = CompressSettings(retrain_head=True, sparsity=0.5).to_spec(MLP, DataRef(path="e.npz", train_path="t.npz"))
    assert [s.kind for s in own.stages] == ["transfer", "prune"] and own.data.classes is None
    assert CompressSettings(retrain_head=True).describe() == "transfer (head re-trained on the training data)"
    assert CompressSettings(retrain_head=True).problems("torch", has_train_data=False) == [
        "transfer needs training data; the chosen data has none (add a labelled training file on the Model page, "
        "data.train_path in a recipe, or use the built-in data)"]


def test_channels_first_removes_channels_recovers_then_prunes_the_rest():
    iterative = CompressSettings(thin=0.5, sparsity=0.65, epochs=20, schedule="iterative", reconstruct="obs",
                                 clusters=8, exclude=("fc3",))
    structured, recovery, prune, cluster = iterative.stages(MLP)
    assert (structured.kind, structured.ratio, structured.round_to, structured.exclude) == ("structured", 0.5,
                                                                                            None, ("fc3",))
    assert recovery.epochs == 20 and prune.finetune == recovery and prune.reconstruct == "obs"
    assert (prune.sparsity, prune.schedule, cluster.clusters) == (0.65, "iterative", 8)
    assert kinds(CompressSettings(thin=0.3, sparsity=0.8, epochs=5)) == ["structured", "finetune", "prune",
                                                                          "finetune"]
    assert kinds(CompressSettings(thin=0.3, sparsity=0.8)) == ["structured", "prune"]   # no training asked for
    assert kinds(CompressSettings(thin=0.3)) == []                        # nothing pruned: no channels either
    assert kinds(CompressSettings(technique="nm", thin=0.3)) == ["prune"]   # unstructured pruning's knob only
    assert iterative.describe().startswith("50% channels removed + 20 ep recovery, then 65% magnitude/global "
                                           "iterative")
    assert iterative.stages(MLP)[-1].bias_clusters is None   # biases float16 unless asked
    shared = CompressSettings(sparsity=0.9, clusters=8, bias_clusters=32)
    assert shared.stages(MLP)[-1].bias_clusters == 32 and "k=8 clustering (biases k=32)" in shared.describe()
    for settings in (iterative, CompressSettings(thin=0.3, sparsity=0.8, epochs=5), shared):
        assert CompressSettings.from_spec(settings.to_spec(MLP)) == settings
    assert CompressSettings.from_spec(RunSpec(model=MLP, stages=(StructuredSpec(ratio=0.4),))).technique == \
        "structured"
    onnx = iterative.problems("onnx", has_train_data=True, unconvertible="op Loop has no conversion")
    assert onnx[0].startswith("structured pruning needs torch modules")
    with pytest.raises(SpecError, match=r"^thin: must be in \[0, 1\), got 1.0"):
        CompressSettings(thin=1.0)


def test_channels_first_recovery_and_the_rounds_learning_rate_are_knobs_of_their_own():
    split = CompressSettings(thin=0.5, thin_epochs=30, sparsity=0.65, epochs=20, lr=0.003, schedule="iterative")
    structured, recovery, prune = split.stages(MLP)
    assert (recovery.epochs, recovery.lr) == (30, 0.01)            # after the channels: the model's own lr
    assert (prune.finetune.epochs, prune.finetune.lr) == (20, 0.003)
    assert "50% channels removed + 30 ep recovery" in split.describe()
    assert "20 ep recovery per round at lr 0.003" in split.describe()
    no_recovery = CompressSettings(thin=0.5, thin_epochs=0, sparsity=0.8, epochs=5)
    assert kinds(no_recovery) == ["structured", "prune", "finetune"]
    only_after_channels = CompressSettings(thin=0.5, thin_epochs=10, sparsity=0.8)
    assert kinds(only_after_channels) == ["structured", "finetune", "prune"]
    assert only_after_channels.problems("torch", has_train_data=False)[0].startswith(
        "recovery fine-tuning needs training data")
    assert CompressSettings(technique="lowrank", epochs=3, lr=3e-4).stages(MLP)[0].finetune.lr == 3e-4
    assert CompressSettings(technique="structured", epochs=3).stages(VIT)[1].lr == 1e-3   # 0: the model's
    for settings in (split, no_recovery, only_after_channels, CompressSettings(sparsity=0.5, epochs=3, lr=0.03)):
        assert CompressSettings.from_spec(settings.to_spec(MLP)) == settings
    assert CompressSettings.from_spec(CompressSettings(sparsity=0.5, epochs=3).to_spec(VIT)).lr == 0.0
    with pytest.raises(SpecError, match=r"^lr: must be in \[0, 1\)"):
        CompressSettings(lr=-0.1)
    with pytest.raises(SpecError, match="^thin_epochs: must be an integer"):
        CompressSettings(thin_epochs=51)


def test_the_smallest_packed_preset_is_the_benchmarked_recipe():
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "mlp-thin-sparse-packed.yaml")
    preset = preset_spec("Smallest packed: channels first + 65% + k=8", recipe.model, recipe.data)
    assert preset.stages == recipe.stages
    assert CompressSettings.from_spec(recipe) == PRESETS["Smallest packed: channels first + 65% + k=8"].settings
    assert all(p.settings.lr in (0.0, *RECOVERY_LRS) for p in PRESETS.values())   # the app's choices


def test_bad_knobs_name_the_field():
    for bad, field in (({"technique": "prune"}, "technique"), ({"ratio": 1.0}, "ratio"), ({"width": 0.0}, "width"),
                       ({"energy": 1.5}, "energy"), ({"distill_epochs": 0}, "distill_epochs"),
                       ({"clusters": 1}, "clusters"), ({"rewind": "lottery"}, "rewind"), ({"steps": 0}, "steps"),
                       ({"classes": (1, 1)}, "classes")):
        with pytest.raises(SpecError, match=f"^{field}"):
            CompressSettings(**bad)


def test_from_spec_reads_every_method_back():
    spec = RunSpec(model=MLP, data=DataRef(classes=(1, 2, 3)), stages=(
        StructuredSpec(ratio=0.4, round_to=8), FinetuneSpec(epochs=6), ClusterSpec(clusters=8),
        QATSpec(weight_bits=8, epochs=3, activation_bits=8)))
    back = CompressSettings.from_spec(spec)
    assert (back.technique, back.ratio, back.round_to, back.epochs) == ("structured", 0.4, 8, 6)
    assert (back.clusters, back.qat, back.bits, back.qat_epochs, back.qat_act8) == (8, True, 8, 3, True)
    assert back.classes == ()     # a class subset without a transfer stage is not a transfer
    nm = CompressSettings.from_spec(RunSpec(model=MLP, stages=(PruneSpec(sparsity=0.5, nm="2:4"),)))
    assert nm.technique == "nm" and nm.sparsity == 0.0
    for settings in (CompressSettings(technique="lowrank", energy=0.7, epochs=2, bits=8, exclude=("fc2",)),
                     CompressSettings(technique="distill", width=0.75, distill_epochs=40, bits=4, qat=True),
                     CompressSettings(sparsity=0.9, schedule="gradual", steps=7, rewind="none", epochs=1,
                                      clusters=32, cluster_epochs=2),
                     CompressSettings(classes=(0, 7), sparsity=0.5, bits=16),
                     CompressSettings(sparsity=0.9, schedule="iterative", epochs=2, reconstruct="obs"),
                     CompressSettings(technique="nm", reconstruct="refit", calib_samples=64),
                     CompressSettings(sparsity=0.7, method="wanda", calib_samples=128),
                     CompressSettings(retrain_head=True, sparsity=0.5, epochs=2)):
        assert CompressSettings.from_spec(settings.to_spec(MLP)) == settings


def test_exclusions_reach_the_recipe_and_the_description_only_where_the_method_uses_them():
    lowrank = CompressSettings(technique="lowrank", exclude=("fc1",))
    assert lowrank.to_spec(MLP).stages[0].exclude == ("fc1",) and "1 layer(s) excluded" in lowrank.describe()
    for unused in (CompressSettings(technique="distill", exclude=("fc1",)), CompressSettings(exclude=("fc1",))):
        assert "excluded" not in unused.describe()
        assert not any(getattr(s, "exclude", ()) for s in unused.to_spec(MLP).stages)


def test_sweeps_vary_the_method_knob_and_the_bits():
    base, grid = CompressSettings(technique="lowrank").sweep(MLP, [0.95, 0.8], [32, 8])
    assert grid == {"lowrank.energy": [0.8, 0.95], "bits": [32, 8]}
    specs = expand_grid(base, grid)
    assert sorted((s.stages[0].energy, len(s.stages)) for s in specs) == [(0.8, 1), (0.8, 2), (0.95, 1), (0.95, 2)]
    base, grid = CompressSettings(bits=4, qat=True).sweep(MLP, [0.5], [4, 2])
    assert grid == {"sparsity": [0.5], "qat.weight_bits": [4, 2]}
    assert sorted(s.stages[-1].weight_bits for s in expand_grid(base, grid)) == [2, 4]
    base, grid = CompressSettings(technique="nm").sweep(MLP, [0.5], [8, 32])
    assert grid == {"bits": [32, 8]}           # 2:4 fixes the sparsity: nothing else to vary
    base, grid = CompressSettings(sparsity=0.9, clusters=8).sweep(MLP, [0.8, 0.9], [])
    assert [s.kind for s in base.stages] == ["prune", "cluster"] and grid == {"sparsity": [0.8, 0.9]}
    with pytest.raises(SpecError, match="clustering replaces quantization"):
        CompressSettings(sparsity=0.9, clusters=8).sweep(MLP, [0.9], [8])
    mixed = CompressSettings(sparsity=0.5, layer_bits=(("fc1", 8), ("fc2", 2)), layer_bits_method="weight_only")
    base, grid = mixed.sweep(MLP, [0.5, 0.9], [])
    assert grid == {"sparsity": [0.5, 0.9]}
    assert all(s.stages[-1].overrides == {"fc1": 8, "fc2": 2} for s in expand_grid(base, grid))
    with pytest.raises(SpecError, match="per-layer bits are set"):
        mixed.sweep(MLP, [0.9], [8])
    base, grid = CompressSettings(thin=0.5, sparsity=0.65, epochs=2).sweep(MLP, [0.6, 0.7], [], thin=[0.6, 0.3])
    assert grid == {"sparsity": [0.6, 0.7], "structured.ratio": [0.3, 0.6]}
    assert sorted((s.stages[0].ratio, s.stages[2].sparsity) for s in expand_grid(base, grid)) == [
        (0.3, 0.6), (0.3, 0.7), (0.6, 0.6), (0.6, 0.7)]
    with pytest.raises(SpecError, match="channels removed first are swept only when"):
        CompressSettings(sparsity=0.65).sweep(MLP, [0.6], [], thin=[0.5])


def test_problems_say_what_cannot_run():
    why = "the ONNX op TopK (node 'pick') has no torch conversion"
    assert CompressSettings(technique="structured").problems("onnx", True, unconvertible=why) == [
        f"structured pruning needs torch modules, and this ONNX graph does not convert to them: {why}"]
    assert CompressSettings(technique="structured").problems("onnx", True) == []   # the run converts it
    assert CompressSettings(technique="structured").converts("onnx")
    assert not CompressSettings(sparsity=0.5).converts("onnx")
    assert "distillation needs training data" in CompressSettings(technique="distill").problems("torch", False)[0]
    assert "distillation needs training data" in CompressSettings(technique="distill").problems("onnx", False)[0]
    qat = CompressSettings(bits=4, qat=True)
    assert "quantization-aware training needs" in qat.problems("onnx", True, unconvertible=why)[0]
    assert CompressSettings(sparsity=0.5, bits=8).problems("onnx", True, unconvertible=why) == []   # graph-only
    assert "set the bitwidth to 32" in CompressSettings(clusters=8, bits=8).problems("torch", True)[0]
    assert "at least two classes" in CompressSettings(classes=(3,)).problems("torch", True)[0]
    traced = "a TorchScript model (.pt/.ts)"
    obs = CompressSettings(sparsity=0.5, reconstruct="obs")
    assert obs.converts("torch", traced) and obs.problems("torch", True, traced=traced) == []   # converted
    assert obs.problems("torch", True, traced=traced, unconvertible=why)[0].startswith(
        "reconstruction (solving each layer's kept weights; an ONNX export of the model takes it) edits nn.Linear/"
        f"Conv modules, and {traced} has none (its layers are compiled TorchScript), and converting it to them "
        f"through ONNX failed ({why})")
    tuned = CompressSettings(sparsity=0.5, epochs=2)
    assert not tuned.converts("torch", traced) and tuned.problems("torch", True, traced=traced, unconvertible=why) == []
    assert "centroid fine-tuning (re-parametrizes each layer's weight) edits" in CompressSettings(
        sparsity=0.5, clusters=8, cluster_epochs=2).problems("torch", True, traced=traced, unconvertible=why)[0]
    rewind = CompressSettings(sparsity=0.9, schedule="iterative", rewind="weight", epochs=1)
    assert not rewind.problems("torch", True) and "checkpoint" in rewind.problems("torch", True, False)[0]
    assert not CompressSettings(technique="nm").problems("onnx", False)       # 2:4 masks work on ONNX graphs


@pytest.mark.parametrize("settings, problem", [
    (CompressSettings(sparsity=0.8, reconstruct="refit"), None),
    (CompressSettings(sparsity=0.8, method="random", reconstruct="obs"), "chooses the pruned weights itself"),
    (CompressSettings(technique="nm", reconstruct="obs"), "chooses the pruned weights itself"),
    (CompressSettings(sparsity=0.9, schedule="iterative", rewind="weight", epochs=1, reconstruct="refit"),
     "weight rewinding resets the solved weights"),
])
def test_reconstruction_reaches_the_prune_stage_unless_problems_refuse_it(settings, problem):
    (prune,) = settings.to_spec(MLP).stages
    assert prune.reconstruct == ("none" if problem else settings.reconstruct)
    found = settings.problems("torch", True)
    assert (problem in found[0]) if problem else not found
    if not settings.epochs:
        assert settings.problems("onnx", True) == found           # ONNX graphs are solved too
    named = {"refit": "least-squares refit", "obs": "OBS reconstruction"}[settings.reconstruct]
    assert (named in settings.describe()) == (problem is None)


def test_describe_names_the_method():
    assert CompressSettings(technique="structured", ratio=0.5, round_to=8, epochs=30).describe() == \
        "structured 50% channels (round to 8) + 30 ep recovery"
    assert CompressSettings(sparsity=0.9, schedule="iterative", epochs=2, rewind="weight", clusters=16).describe() \
        == "90% magnitude/global iterative 20%/round, weight rewinding + 2 ep recovery per round + k=16 clustering"
    assert CompressSettings(technique="nm", bits=4, qat=True).describe() == "2:4 magnitude + QAT 4-bit (5 ep)"
