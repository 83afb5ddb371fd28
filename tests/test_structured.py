"""Structured pruning removes channels, neurons and heads for real: smaller dense layers that still run,
in torch and after ONNX export, on plain, residual+BatchNorm, depthwise and attention architectures."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import workbench.structured  # noqa: F401  registers the "structured" stage runner
from tests.architectures import TinyMobileNet, TinyResNet, random_init
from tests.conftest import FAST_MEASURE
from workbench import zoo
from workbench.errors import WorkbenchError
from workbench.evaluate import make_session
from workbench.export import export_onnx
from workbench.specs import RunSpec, StructuredSpec
from workbench.stages import STAGE_RUNNERS, Variant
from workbench.structured import prune_structured

EXAMPLE = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)),)


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _ort_matches_torch(module: nn.Module) -> onnx.ModelProto:
    """Export, run in ONNX Runtime at two batch sizes (the batch axis is dynamic), compare with torch."""
    model = export_onnx(module, EXAMPLE)
    session = make_session(model)
    for batch in (1, 5):
        x = torch.rand(batch, 1, 8, 8)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), atol=1e-4, rtol=1e-3)
    return model


@pytest.fixture(scope="module")
def cnn_pruned():
    base = zoo.load_sample("digits-cnn")
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5))
    return base, pruned, report


def test_digits_cnn_half_the_channels_go(cnn_pruned):
    base, pruned, report = cnn_pruned
    assert pruned is not base and _params(base) == report["params_before"] == 98_026  # the input is untouched
    assert report["params_after"] == _params(pruned) < 0.3 * report["params_before"]
    assert report["macs_after"] < 0.3 * report["macs_before"]
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert pruned.head[1].out_features == 10 and pruned.head[1].in_features == 64 * 2 * 2
    assert pruned(EXAMPLE[0]).shape == (2, 10)
    assert ("head.1", "classifier: its outputs are the model's outputs") in report["skipped"]
    assert {row["layer"] for row in report["pruned_layers"]} == {"features.0.0", "features.1.0", "features.3.0",
                                                                 "head.1"}


def test_digits_cnn_exports_smaller_and_runs_in_onnxruntime(cnn_pruned):
    base, pruned, _ = cnn_pruned
    model = _ort_matches_torch(pruned)
    assert model.ByteSize() < 0.4 * export_onnx(base, EXAMPLE).ByteSize()


def test_removing_only_dead_neurons_changes_nothing():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with torch.no_grad():
        net[1].weight[::2] = 0   # half the hidden neurons are dead: l1 importance must pick exactly these
        net[1].bias[::2] = 0
    pruned, _ = prune_structured(net, EXAMPLE, StructuredSpec(ratio=0.5))
    assert pruned[1].out_features == 16 and pruned[3].in_features == 16
    x = torch.rand(7, 1, 8, 8)
    torch.testing.assert_close(pruned(x), net(x))


def test_residual_network_with_batchnorm_prunes_coupled_channels_together():
    base = random_init(TinyResNet())
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5))
    assert report["params_after"] < 0.4 * report["params_before"]
    for block in [*pruned.layer1, *pruned.layer2]:
        assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
        assert block.bn2.num_features == block.conv2.out_channels
        if block.downsample is not None:
            assert block.downsample[0].out_channels == block.conv2.out_channels
    # the residual stream is one coupled group: stem, every block's conv2 and the fc input shrink together
    assert pruned.stem[0].out_channels == pruned.layer1[1].conv2.out_channels == 8
    assert pruned.fc.in_features == pruned.layer2[1].conv2.out_channels == 16 and pruned.fc.out_features == 10
    _ort_matches_torch(pruned)


def test_depthwise_separable_network_keeps_groups_equal_to_channels():
    base = random_init(TinyMobileNet())
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5, importance="l2"))
    assert report["params_after"] < 0.5 * report["params_before"]
    depthwise = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 3
    for conv in depthwise:
        assert conv.groups == conv.in_channels == conv.out_channels
    assert pruned.blocks[0].depthwise[0].out_channels == 48       # hidden 96 -> 48
    _ort_matches_torch(pruned)


def test_vit_loses_whole_heads_and_mlp_neurons():
    base = zoo.build("digits-vit").eval()
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5))
    assert report["heads"] == {"blocks.0.attn": [4, 2], "blocks.1.attn": [4, 2]}
    for block in pruned.blocks:
        attn = block.attn
        assert attn.head_dim == 16  # whole heads go; each head keeps its width
        assert attn.qkv.out_features == 3 * attn.heads * attn.head_dim
        assert attn.proj.in_features == attn.heads * attn.head_dim
        assert block.mlp[0].out_features == block.mlp[2].in_features == 64
    assert pruned.head.out_features == 10
    _ort_matches_torch(pruned)


def test_at_least_one_head_survives_a_high_ratio():
    pruned, report = prune_structured(zoo.build("digits-vit").eval(), EXAMPLE, StructuredSpec(ratio=0.9))
    assert all(after >= 1 for _, after in report["heads"].values())
    assert pruned(EXAMPLE[0]).shape == (2, 10)


class TokenMixer(nn.Module):
    """Patch tokens through a torch.nn.MultiheadAttention, or an attention with separate q/k/v Linears."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.embed, self.attn = nn.Linear(4, 32), attention
        self.head = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], 16, 4))
        if isinstance(self.attn, nn.MultiheadAttention):
            mixed = self.attn(tokens, tokens, tokens, need_weights=False)[0]
        else:
            mixed = self.attn(tokens)
        return self.head((tokens + mixed).mean(dim=1))


class SeparateQKV(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
        mixed = torch.softmax(split(self.q(x)) @ split(self.k(x)).transpose(-2, -1), -1) @ split(self.v(x))
        return self.out(mixed.transpose(1, 2).reshape(b, t, d))


def test_multihead_attention_keeps_its_heads_and_narrows_each():
    torch.manual_seed(0)
    pruned, report = prune_structured(TokenMixer(nn.MultiheadAttention(32, 4, batch_first=True)).eval(), EXAMPLE,
                                      StructuredSpec(ratio=0.5))
    assert pruned.attn.num_heads == 4 and pruned.attn.embed_dim == 16 and pruned.attn.head_dim == 4
    assert "attn" in {r["layer"] for r in report["pruned_layers"]}
    assert pruned(EXAMPLE[0]).shape == (2, 10)


def test_unrecognised_attention_is_left_whole_with_a_reason():
    torch.manual_seed(0)
    base = TokenMixer(SeparateQKV(32, 4)).eval()
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5))
    assert pruned.attn.q.weight.shape == (32, 32) and pruned.attn.num_heads == 4
    assert "heads are left whole" in dict(report["skipped"])["attn"]
    assert pruned.head[0].out_features == 12  # the rest of the model is still pruned
    assert pruned(EXAMPLE[0]).shape == (2, 10)


def test_exclusions_leave_matching_and_coupled_layers_untouched(cnn_pruned):
    base, _, _ = cnn_pruned
    pruned, report = prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5, exclude=("features.3*",)))
    assert pruned.features[3][0].weight.shape == base.features[3][0].weight.shape
    torch.testing.assert_close(pruned.features[3][0].weight, base.features[3][0].weight)
    assert pruned.features[3][1].num_features == 128
    # conv2's outputs feed the excluded conv3, so removing them would change conv3: it stays whole too
    assert pruned.features[1][0].out_channels == 64
    assert pruned.features[0][0].out_channels == 16
    skipped = dict(report["skipped"])
    assert skipped["features.3.0"] == "excluded by pattern 'features.3*'"
    assert skipped["features.1.0"] == "coupled to excluded layer features.3.0"
    with pytest.raises(WorkbenchError, match=r"^structured exclude: 'feature.3\*' matches no layer \(layers: "
                                             r"features.0.0, features.1.0, features.3.0, head.1\)$"):
        prune_structured(base, EXAMPLE, StructuredSpec(ratio=0.5, exclude=("features.3*", "feature.3*")))


def test_random_importance_is_reproducible_and_global_scope_runs(cnn_pruned):
    base, _, _ = cnn_pruned
    spec = StructuredSpec(ratio=0.5, importance="random", scope="global")
    a, _ = prune_structured(base, EXAMPLE, spec)
    b, _ = prune_structured(base, EXAMPLE, spec)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


class HardCodedReshape(nn.Module):
    """A forward that hard-codes conv2's width: pruning conv2 breaks it, so conv2 must be left whole."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.c1(x))).reshape(-1, 16 * 64))


def test_a_layer_that_breaks_the_forward_is_skipped_with_a_reason():
    pruned, report = prune_structured(HardCodedReshape().eval(), EXAMPLE, StructuredSpec(ratio=0.5))
    assert pruned.c1.out_channels == 8 and pruned.c2.out_channels == 16
    assert "breaks the forward pass" in dict(report["skipped"])["c2"]
    assert pruned(EXAMPLE[0]).shape == (2, 10)


def test_nothing_prunable_is_a_one_line_error():
    with pytest.raises(WorkbenchError, match=r"^structured: nothing could be pruned \(1: classifier"):
        prune_structured(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval(), EXAMPLE, StructuredSpec())
    mlp = zoo.build("digits-mlp").eval()
    with pytest.raises(WorkbenchError, match="structured: nothing could be pruned"):
        prune_structured(mlp, EXAMPLE, StructuredSpec(ratio=0.5, exclude=("fc*",)))


def test_runner_refuses_onnx_variants(tiny_onnx):
    variant = Variant(module=None, onnx_model=onnx.load(str(tiny_onnx)))
    with pytest.raises(WorkbenchError, match="structured: needs a torch model"):
        STAGE_RUNNERS["structured"](variant, StructuredSpec(), None)


@pytest.mark.slow
def test_pipeline_structured_then_finetune_is_really_smaller(tmp_path):
    from workbench.pipeline import run_pipeline

    spec = RunSpec.from_dict({"model": "digits-cnn", "measure": FAST_MEASURE, "stages": [
        {"structured": {"ratio": 0.5}}, {"finetune": {"epochs": 2, "lr": 0.005}}]})
    report = run_pipeline(spec, out_dir=tmp_path)
    base, pruned, tuned = report.baseline, *report.variants
    assert pruned.facts.structured and tuned.facts.structured
    assert pruned.history[0]["params_after"] < pruned.history[0]["params_before"]
    assert pruned.notes[0].startswith("removed 50% of channels per group (layer scope) in 3 Conv2d, 1 Linear layers")
    assert pruned.notes[1] == "left whole: head.1 (classifier: its outputs are the model's outputs)"   # and why
    for v in (pruned, tuned):
        assert v.measurement.size.file_bytes < 0.4 * base.measurement.size.file_bytes
        assert next(c for c in v.claims if c.aspect == "file size").kind == "real"
    assert tuned.measurement.metrics["accuracy"] > 0.9
    assert (tmp_path / "model.onnx").stat().st_size < 0.4 * base.measurement.size.file_bytes
