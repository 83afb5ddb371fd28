"""torch -> ONNX export: the exported graph's weights keep the torch parameter names."""

import numpy as np
import onnx
import pytest
import torch
from onnx import helper
from torch import nn

from tests.conftest import FAST_MEASURE
from workbench.evaluate import make_session
from workbench.export import export_onnx
from workbench.onnx_graph import weight_tensors
from workbench.pipeline import run_pipeline
from workbench.specs import RunSpec
from workbench.zoo import load_sample

EXAMPLE = (torch.zeros(2, 1, 8, 8),)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")   # tracing the sample's attention reshape
@pytest.mark.parametrize("scripted", [False, True], ids=["torch.export", "TorchScript"])
def test_transformer_linears_keep_their_torch_names_and_the_graph_computes_the_same(scripted):
    vit = load_sample("digits-vit").eval()
    linears = [f"{n}.weight" for n, m in vit.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    model = export_onnx(torch.jit.trace(vit, EXAMPLE) if scripted else vit, EXAMPLE)
    assert [w.name for w in weight_tensors(model)] == linears
    x = torch.rand(3, 1, 8, 8)
    (got,) = make_session(model).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(got, vit(x).detach().numpy(), atol=1e-5)


def test_exported_graphs_carry_no_debug_records_that_would_count_as_file_size():
    vit = load_sample("digits-vit").eval()
    model = export_onnx(vit, EXAMPLE)
    assert not any(n.metadata_props or n.doc_string for n in model.graph.node)   # stack traces, FX names
    x = torch.rand(3, 1, 8, 8)
    np.testing.assert_allclose(make_session(model).run(None, {"input": x.numpy()})[0], vit(x).detach().numpy(),
                               atol=1e-5)


class Twins(nn.Module):
    """Two Linears on tokens (a 3-D input) holding the same weights: neither name can be told apart."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False), nn.Linear(8, 8)
        self.b.weight.data.copy_(self.a.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, 8, 8)
        return self.c(self.b(self.a(tokens))).mean(dim=1)


def test_a_copy_two_parameters_share_keeps_the_exporter_name():
    names = [w.name for w in weight_tensors(export_onnx(Twins().eval(), EXAMPLE))]
    assert "c.weight" in names and "a.weight" not in names and "b.weight" not in names


def test_per_layer_bits_by_torch_name_reach_a_transformer_block(tmp_path):
    bits = {"blocks.0.attn.qkv": 2, "blocks.*.mlp.*": 4}
    spec = RunSpec.from_dict({"model": "digits-vit", "measure": FAST_MEASURE, "stages": [
        {"quantize": {"method": "weight_only", "weight_bits": 8, "overrides": bits}}]})
    run_pipeline(spec, out_dir=tmp_path)
    nodes = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    got = {n.input[1].split(".weight")[0]: helper.get_attribute_value(next(a for a in n.attribute if a.name == "bits"))
           for n in nodes}
    assert got["blocks.0.attn.qkv"] == 2 and got["blocks.1.attn.qkv"] == 8
    assert got["blocks.0.mlp.0"] == got["blocks.1.mlp.2"] == 4 and got["head"] == 8


def test_export_keeps_torch_caches_in_the_data_dir(tmp_path):
    """torch.export makes a compile-cache folder, by default in $TMPDIR: it goes to the workbench data dir."""
    import os
    import subprocess
    import sys

    tmp, home = tmp_path / "tmp", tmp_path / "data"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env |= {"TMPDIR": str(tmp), "WORKBENCH_HOME": str(home)}
    code = ("import torch; from workbench.export import export_onnx; from workbench.zoo import load_sample; "
            "export_onnx(load_sample('digits-mlp'), (torch.zeros(2, 1, 8, 8),))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp.iterdir()) == [] and (home / "cache" / "torchinductor").is_dir()
