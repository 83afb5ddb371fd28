"""Measure one variant the same way as every other: accuracy (or fidelity), latency, size, op coverage.

The caller fixes the eval set, batch sizes and threads once per run (a `MeasureSpec`), so the baseline
and each variant are measured under identical conditions. Nothing here decides what a number means;
that is workbench.claims.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from workbench.benchmark import LatencyStats, ort_latency, torch_latency
from workbench.data import Dataset
from workbench.evaluate import answers, make_session, predict, score
from workbench.onnx_graph import OpCoverage, op_coverage, weight_tensors
from workbench.significance import PairedChange, changes, class_counts, pack_answers
from workbench.size import SizeStats, size_stats
from workbench.specs import MeasureSpec
from workbench.summary import model_macs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    metrics: dict[str, float]                 # accuracy and/or fidelity vs the baseline
    latency: tuple[LatencyStats, ...]         # ONNX Runtime, per batch size
    torch_latency: tuple[LatencyStats, ...]   # torch eager, when the variant is still a torch model
    size: SizeStats
    coverage: OpCoverage
    eval_samples: int
    macs: int | None = None                   # multiply-adds per sample of Conv/Gemm/MatMul, dense (None: unknown)
    paired: PairedChange | None = None        # right/wrong answers vs the baseline's, sample by sample (labelled data)
    answers: str | None = None                # which samples it got right (labelled data; significance.pack_answers)
    classes: tuple[tuple[int, int, int], ...] = ()   # (label, samples, right) per class (labelled data)

    def latency_at(self, batch_size: int, engine: str = "onnxruntime") -> LatencyStats | None:
        pool = self.latency if engine == "onnxruntime" else self.torch_latency
        return next((s for s in pool if s.batch_size == batch_size), None)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(model: onnx.ModelProto, eval_set: Dataset, spec: MeasureSpec, module=None,
            reference: np.ndarray | None = None, storage_bits: int | None = None,
            layer_bits: dict[str, int] | None = None,
            baseline_outputs: np.ndarray | None = None) -> tuple[Measurement, np.ndarray]:
    """Measure `model` (and `module`'s eager latency if given); returns the measurement and raw outputs.
    `storage_bits` / `layer_bits` are the bits weight values need where the file stores more (workbench.size).
    With labels and `baseline_outputs`, the accuracy change is also counted sample by sample (`paired`)."""
    data = model.SerializeToString()
    session = make_session(data, spec.threads)
    outputs = predict(session, eval_set)
    metrics = score(outputs, eval_set.labels, reference)
    latency = ort_latency(data, eval_set, spec.batch_sizes, spec.threads, spec.warmup, spec.repeats,
                          min_time_s=spec.min_time_s)
    eager: list[LatencyStats] = []
    if module is not None and spec.torch_eager:
        eager = torch_latency(module, eval_set, spec.batch_sizes, spec.threads, spec.warmup, spec.repeats,
                              min_time_s=spec.min_time_s)
    size = size_stats(data, weight_tensors(model), storage_bits, layer_bits)
    counted = model_macs(model)
    paired = packed = None
    classes: tuple[tuple[int, int, int], ...] = ()
    if "accuracy" in metrics:
        right = answers(outputs, eval_set.labels)
        packed, classes = pack_answers(right), class_counts(right, eval_set.labels)
        if baseline_outputs is not None:
            paired = changes(answers(baseline_outputs, eval_set.labels), right)
    result = Measurement(metrics, tuple(latency), tuple(eager), size, op_coverage(model), len(eval_set),
                         counted[0] if counted else None, paired, packed, classes)
    return result, outputs
