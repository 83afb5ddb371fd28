"""Latency of one model call, measured the same way for every variant and engine.

Contract:
- For batch size `b` the input is the first `b` samples of the dataset, tiled (repeated) when the
  dataset has fewer than `b` samples. Inputs are prepared before timing; only the model call is timed.
- `warmup` untimed calls come first, then timed calls with `time.perf_counter_ns`, one call per
  sample, with Python's garbage collector paused. Timing stops after `repeats` calls *and* at least
  `min_time_s` of timed calls (so microsecond-scale calls get thousands of samples, not a 3 ms
  window of scheduler noise), or once the time budget (`budget_s`, default 2 s) is spent, but never
  before `min(5, repeats)` timed calls; warm-up is cut short by the same budget.
  `LatencyStats.repeats` records how many calls were actually timed.
- Reported: median, 90th percentile (numpy linear interpolation) and mean, in milliseconds.
- ONNX Runtime runs through `evaluate.make_session` (`threads` intra-op threads, sequential).
  torch runs eager in eval mode under `no_grad` with `torch.set_num_threads(threads)`; the previous
  thread count and the module's train/eval mode are restored afterwards.
- An ONNX model whose batch axis is a fixed number can only run that batch size: other batch sizes
  are skipped with a warning, so the result may hold fewer entries than `batch_sizes`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from workbench.data import Dataset
from workbench.errors import WorkbenchError
from workbench.evaluate import ModelSource, feeds, fixed_batch, make_session, run_first_output

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

BUDGET_S = 2.0      # per batch size, for the timed calls (and separately for warm-up)
MIN_TIMED = 5       # the budget never cuts timing below this many calls


@dataclass(frozen=True)
class LatencyStats:
    engine: str          # "onnxruntime" | "torch-eager"
    batch_size: int
    threads: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int         # timed calls actually made
    warmup: int          # warm-up calls requested

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tiled_inputs(dataset: Dataset, batch_size: int) -> Dataset:
    """The first `batch_size` samples, repeating the dataset when it is smaller."""
    if len(dataset) == 0:
        raise WorkbenchError(f"{dataset.name}: no samples to benchmark with")
    arrays = tuple(x[:batch_size] if len(x) >= batch_size else np.resize(x, (batch_size, *x.shape[1:]))
                   for x in dataset.inputs)
    return Dataset(dataset.name, arrays)


def time_calls(call: Callable[[], object], warmup: int, repeats: int, budget_s: float = BUDGET_S,
               min_time_s: float = 0.0) -> list[int]:
    """Per-call wall times in nanoseconds (see the module docstring for the stopping rule)."""
    budget_ns = int(budget_s * 1e9)
    start = time.perf_counter_ns()
    for done in range(warmup):
        if done and time.perf_counter_ns() - start > budget_ns:
            break
        call()
    floor = min(MIN_TIMED, repeats)
    times: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        min_ns = min(int(min_time_s * 1e9), budget_ns)
        while True:
            elapsed = time.perf_counter_ns() - start
            if (len(times) >= repeats and elapsed >= min_ns) or (len(times) >= floor and elapsed >= budget_ns):
                break
            t0 = time.perf_counter_ns()
            call()
            times.append(time.perf_counter_ns() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize(times_ns: list[int], engine: str, batch_size: int, threads: int, warmup: int) -> LatencyStats:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    return LatencyStats(engine=engine, batch_size=batch_size, threads=threads,
                        median_ms=float(np.median(ms)), p90_ms=float(np.percentile(ms, 90)),
                        mean_ms=float(np.mean(ms)), repeats=len(times_ns), warmup=warmup)


def _check_args(batch_sizes: Iterable[int], threads: int, warmup: int, repeats: int) -> list[int]:
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise WorkbenchError(f"batch_sizes: must be positive integers, got {sizes}")
    if threads < 1 or warmup < 0 or repeats < 1:
        raise WorkbenchError(f"need threads >= 1, warmup >= 0, repeats >= 1 (got {threads}, {warmup}, {repeats})")
    return sizes


def ort_latency(model: ModelSource, dataset: Dataset, batch_sizes: Iterable[int], threads: int = 1,
                warmup: int = 10, repeats: int = 100, budget_s: float = BUDGET_S,
                min_time_s: float = 0.0) -> list[LatencyStats]:
    """ONNX Runtime latency of one `session.run` (all outputs) per batch size."""
    sizes = _check_args(batch_sizes, threads, warmup, repeats)
    session = make_session(model, threads)
    fixed = fixed_batch(session)
    results = []
    for b in sizes:
        if fixed is not None and b != fixed:
            log.warning("skipping batch size %d: the model's batch axis is fixed at %d", b, fixed)
            continue
        batch = feeds(session, tiled_inputs(dataset, b), 0, b)
        run_first_output(session, batch)  # surfaces run errors as WorkbenchError before timing

        def call(batch: dict[str, np.ndarray] = batch) -> object:
            return session.run(None, batch)

        times = time_calls(call, warmup, repeats, budget_s, min_time_s)
        results.append(summarize(times, "onnxruntime", b, threads, warmup))
        log.debug("onnxruntime batch %d: median %.3f ms", b, results[-1].median_ms)
    return results


def torch_latency(module: nn.Module, dataset: Dataset, batch_sizes: Iterable[int], threads: int = 1,
                  warmup: int = 10, repeats: int = 100, budget_s: float = BUDGET_S,
                  min_time_s: float = 0.0) -> list[LatencyStats]:
    """Eager torch latency of one forward call per batch size (float32 inputs shaped like the data)."""
    import torch

    sizes = _check_args(batch_sizes, threads, warmup, repeats)
    previous_threads, was_training = torch.get_num_threads(), module.training
    results = []
    try:
        torch.set_num_threads(threads)
        module.eval()
        with torch.no_grad():
            for b in sizes:
                args = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                        for x in tiled_inputs(dataset, b).inputs]

                def call(args: list[torch.Tensor] = args) -> object:
                    return module(*args)

                times = time_calls(call, warmup, repeats, budget_s, min_time_s)
                results.append(summarize(times, "torch-eager", b, threads, warmup))
    finally:
        torch.set_num_threads(previous_threads)
        module.train(was_training)
    return results
