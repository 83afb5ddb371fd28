"""One rule says when a recipe's stages need the model converted to torch modules (pipeline and app)."""

from workbench.models import EXPORTED, SCRIPTED
from workbench.presets import CompressSettings
from workbench.specs import ClusterSpec, FinetuneSpec, LowRankSpec, PruneSpec, QuantSpec
from workbench.stage_needs import layer_edits, needs_conversion

TUNE = FinetuneSpec(epochs=2)


def test_an_onnx_graph_converts_only_for_stages_that_train_or_reshape_layers():
    graph_only = [PruneSpec(sparsity=0.5), LowRankSpec(energy=0.9), ClusterSpec(clusters=8), QuantSpec()]
    assert not needs_conversion(graph_only, onnx_graph=True, traced=None)
    assert needs_conversion([PruneSpec(sparsity=0.5), TUNE], onnx_graph=True, traced=None)
    assert needs_conversion([ClusterSpec(clusters=8, finetune=TUNE)], onnx_graph=True, traced=None)
    assert needs_conversion([PruneSpec(sparsity=0.9, schedule="iterative", finetune=TUNE)], True, None)


def test_a_traced_model_converts_for_the_layer_edits_its_kind_cannot_make():
    centroids = [ClusterSpec(clusters=8, finetune=TUNE)]
    assert layer_edits(centroids[0]) == ["centroids"]
    assert needs_conversion(centroids, onnx_graph=False, traced=SCRIPTED)      # TorchScript: frozen weights
    assert not needs_conversion(centroids, onnx_graph=False, traced=EXPORTED)  # torch.export trains them
    assert needs_conversion([LowRankSpec(energy=0.9)], onnx_graph=False, traced=EXPORTED)
    assert not needs_conversion([LowRankSpec(energy=0.9), TUNE], onnx_graph=False, traced=None)   # nn.Modules
    wanda = [PruneSpec(sparsity=0.5, method="wanda")]     # reads each Linear/Conv module's inputs
    assert layer_edits(wanda[0]) == ["wanda"]
    assert needs_conversion(wanda, onnx_graph=False, traced=EXPORTED)
    assert not needs_conversion(wanda, onnx_graph=True, traced=None)   # ONNX Runtime exposes the inputs


def test_the_compress_page_asks_the_same_rule_of_the_stages_it_would_launch():
    for settings in (CompressSettings(technique="structured"), CompressSettings(sparsity=0.5),
                     CompressSettings(sparsity=0.5, epochs=3), CompressSettings(technique="lowrank", epochs=0),
                     CompressSettings(sparsity=0.9, clusters=8, cluster_epochs=2, bits=32),
                     CompressSettings(sparsity=0.5, method="wanda")):
        for kind, onnx_graph, traced in (("onnx", True, None), ("torch", False, SCRIPTED),
                                         ("torch", False, EXPORTED), ("torch", False, None)):
            assert settings.converts(kind, traced) == needs_conversion(settings.stages(), onnx_graph, traced)
