"""ONNX graphs as torch modules (`workbench.onnx_torch`): which exports convert, how exactly, how fast, and
whether structured pruning then removes channels. Writes the "conversion" section of BENCHMARKS.md.

Each model is exported three times, with torch's TorchScript exporter (what most ONNX files in the wild come
from), with it for batch size 1 only (as many files are), and with its torch.export-based exporter (what the
workbench writes), then converted and checked against ONNX Runtime on 32 random inputs. Models are built
here with random weights (no downloads): the three samples' architectures, torchvision-style ResNet-18 and
MobileNetV3 blocks, an nn.TransformerEncoder, an LSTM (which converts to nn.LSTM).

    python bench/conversion_benchmark.py      # ~2 min on 2 vCPUs; rewrites its section of BENCHMARKS.md
"""

from __future__ import annotations

import contextlib
import datetime
import io
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from sections import write_section
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.architectures import MobileNetV3Block, ResNet18, TinyResNet, TokenEncoder, random_init  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.export import export_onnx  # noqa: E402
from workbench.onnx_torch import convert  # noqa: E402
from workbench.specs import StructuredSpec  # noqa: E402
from workbench.structured import prune_structured  # noqa: E402
from workbench.zoo import load_sample  # noqa: E402

CHECK = 32


class RowLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.out = nn.LSTM(8, 32, batch_first=True), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(x.reshape(x.shape[0], 8, 8))[0][:, -1])


DIGITS = (1, 8, 8)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "digits-mlp (sample)": (lambda: load_sample("digits-mlp"), DIGITS),
    "digits-cnn (sample)": (lambda: load_sample("digits-cnn"), DIGITS),
    "digits-vit (sample)": (lambda: load_sample("digits-vit"), DIGITS),
    "ResNet blocks + BatchNorm": (lambda: random_init(TinyResNet()), DIGITS),
    "MobileNetV3 block (hard-swish, SE)": (lambda: random_init(MobileNetV3Block()), DIGITS),
    "nn.TransformerEncoder, 2 layers": (lambda: random_init(TokenEncoder()), DIGITS),
    "ResNet-18 layout, 224x224": (lambda: random_init(ResNet18()), (3, 224, 224)),
    "LSTM": (lambda: random_init(RowLSTM()), DIGITS),
}


EXPORTERS = ("TorchScript", "TorchScript, batch 1 only", "torch.export")


def export(module: nn.Module, example: tuple, exporter: str) -> onnx.ModelProto:
    if exporter == "torch.export":
        return export_onnx(module, example)
    fixed = exporter.endswith("batch 1 only")   # many files fix the batch (and bake it into their reshapes)
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(x[:1] for x in example) if fixed else example, buffer, dynamo=False,
                          input_names=["input"], output_names=["logits"], opset_version=17,
                          dynamic_axes=None if fixed else {"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def measure(name: str, exporter: str) -> dict:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    module = make().eval()
    x = np.random.default_rng(0).random((CHECK, *shape), dtype=np.float32)
    example = (torch.from_numpy(x[:2]),)
    graph = export(module, example, exporter)
    row = {"model": name, "exporter": exporter, "nodes": len(graph.graph.node),
           "params": sum(p.numel() for p in module.parameters())}
    started = time.perf_counter()
    try:
        conversion = convert(graph, [x])
    except WorkbenchError as exc:
        return row | {"converts": f"no: {exc}"}
    row |= {"converts": "yes", "layers": conversion.layers, "max rel. error": f"{conversion.max_error:.1e}",
            "convert s": time.perf_counter() - started}
    started = time.perf_counter()
    export_onnx(conversion.module, example)
    row["export again s"] = time.perf_counter() - started
    try:
        _, report = prune_structured(conversion.module, example, StructuredSpec(ratio=0.5))
        row["structured 50%"] = f"{report['params_before']:,} -> {report['params_after']:,} params"
    except WorkbenchError as exc:
        row["structured 50%"] = str(exc)
    return row


def render(rows: list[dict], seconds: float) -> str:
    keys = ["model", "exporter", "nodes", "params", "converts", "layers", "max rel. error", "convert s",
            "export again s", "structured 50%"]

    def fmt(key: str, value) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.2f}"
        return f"{value:,}" if isinstance(value, int) else str(value).replace("|", "/")

    converted = [r for r in rows if r["converts"] == "yes"]
    fixed = [r for r in rows if r["exporter"].endswith("batch 1 only")]
    slowest = max(converted, key=lambda r: r["convert s"])
    lines = [
        "## ONNX graphs as torch modules (`workbench.onnx_torch`)",
        "",
        f"Generated by `python bench/conversion_benchmark.py` on {datetime.date.today()} in {seconds / 60:.1f} min "
        f"(torch {torch.__version__}). Random weights; each graph is checked against ONNX Runtime on {CHECK} random "
        "inputs (`max rel. error`: the largest |torch - ORT| over the largest |output|; the conversion is refused "
        "above 1e-3; a graph with a fixed batch runs one chunk at a time). `convert s`: conversion plus that "
        "check; `export again s`: the converted module back to "
        "ONNX with a dynamic batch (what every variant of a converted run goes through); `structured 50%`: "
        "Torch-Pruning on the converted module, layer scope, the classifier's outputs kept.",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        *("| " + " | ".join(fmt(k, r.get(k)) for k in keys) + " |" for r in rows),
        "",
        f"- {len(converted)} of {len(rows)} exports convert; the largest error is "
        f"{max(float(r['max rel. error']) for r in converted):.1e} of the output scale. The slowest conversion is "
        f"{slowest['model']} ({slowest['exporter']}, {slowest['params']:,} parameters): {slowest['convert s']:.1f} s "
        "including the ONNX Runtime check.",
        f"- Exported for batch size 1 only: {len([r for r in fixed if r['converts'] == 'yes'])} of {len(fixed)} "
        "convert to modules that take any batch (the reshapes that carry the fixed batch on its own axis copy it "
        "instead); where the batch is folded into another size (sequence-first attention: batch x heads) the "
        "conversion is refused with how to export instead.",
        "- What does not convert is named, op and node, before a run starts; the methods that work on the graph "
        "itself (pruning, quantization, reconstruction, low-rank, clustering) still apply to it. Here: "
        + ("; ".join(f"{r['model']} ({r['exporter']}): {r['converts'].removeprefix('no: ')}" for r in rows
                     if r["converts"] != "yes") or "every export converted") + ".",
        "- LSTM and GRU nodes become nn.LSTM / nn.GRU (trainable; Torch-Pruning cannot narrow them, so structured "
        "pruning says so and leaves them whole).",
        "- Where a reshape's sizes are tied to a layer's width (attention heads split from a fused projection), "
        "structured pruning leaves that layer whole and says so, instead of letting the reshape fold samples "
        "into each other.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    started = time.perf_counter()
    rows = []
    for name in MODELS:
        for exporter in EXPORTERS:
            print(f"{name}, {exporter}", file=sys.stderr, flush=True)
            rows.append(measure(name, exporter))
    text = render(rows, time.perf_counter() - started)
    print(text)
    write_section("conversion", text)


if __name__ == "__main__":
    main()
