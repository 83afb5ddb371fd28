"""workbench.recipe_diff: the differences between two recipes' stages, aligned by kind, in words."""

from workbench.recipe_diff import stage_differences
from workbench.specs import ClusterSpec, FinetuneSpec, PruneSpec, QuantSpec, StructuredSpec


def test_aligned_stages_list_their_differing_fields_and_the_rest_is_added_or_not_held():
    wanted = (StructuredSpec(ratio=0.5), PruneSpec(sparsity=0.9, finetune=FinetuneSpec(lr=0.005)), QuantSpec())
    got = (StructuredSpec(ratio=0.5), FinetuneSpec(), PruneSpec(sparsity=0.9, finetune=FinetuneSpec(lr=0.003)))
    assert stage_differences(wanted, got) == ["finetune: added", "prune.finetune.lr: 0.005 -> 0.003",
                                              "quantize: not held"]
    assert stage_differences(got, got) == []
    assert stage_differences((ClusterSpec(clusters=8),), (ClusterSpec(clusters=8, bias_clusters=32),)) == [
        "cluster.bias_clusters: none -> 32"]


def test_measure_differences_list_what_is_measured_not_how_long_it_is_timed():
    from workbench.recipe_diff import measure_differences
    from workbench.specs import MeasureSpec

    wanted = MeasureSpec(batch_sizes=(1, 4), threads=4, repeats=500, max_eval_samples=200)
    got = MeasureSpec(batch_sizes=(1,), threads=2, repeats=5)
    assert measure_differences(wanted, got) == ["measure.batch_sizes: 1, 4 -> 1", "measure.threads: 4 -> 2",
                                                "measure.max_eval_samples: 200 -> none"]
    assert measure_differences(wanted, wanted) == []
