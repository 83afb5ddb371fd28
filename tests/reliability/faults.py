"""Tools for injecting faults into real runs: worker processes (optionally under a memory limit or in a
mount namespace with a tiny tmpfs over the artifacts dir), stage watching, and the check that no run
was lost.

A run is *lost* when, after the fault and the recovery the product offers (reap, retry, a worker run),
it is missing from the store, still queued or running, in a state other than the one expected, or marked
succeeded without its report.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from workbench.store import Store

# The stages a run's progress names, in order, for a run with a prune and a quantize stage.
STAGES = ("claimed", "load", "baseline", "1: prune", "2: quantize")
FAST = {"batch_sizes": [1, 32], "warmup": 1, "repeats": 5, "threads": 1, "min_time_s": 0}


def two_stages(model: Path) -> dict:
    """Prune then static int8 (calibrated): a run that passes through every kind of pipeline step."""
    return {**quick(model), "stages": [{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "static"}}]}


def quick(model: Path | str) -> dict:
    """Baseline only, on an ONNX file or a sample: a couple of seconds."""
    ref = {"path": str(model)} if Path(str(model)).suffix else {"sample": str(model)}
    return {"model": ref, "measure": FAST}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def worker(home: Path, *extra: str, memory_mb: int | None = None, tmpfs_kb: int | None = None) -> subprocess.Popen:
    """`workbench worker` on `home`; with `memory_mb` its address space (and its run processes') is capped,
    with `tmpfs_kb` it sees HOME/runs as a tmpfs of that size (in its own user + mount namespace)."""
    cmd = [sys.executable, "-m", "workbench", "worker", "--home", str(home), *extra]
    if tmpfs_kb is not None:
        cmd = [*UNSHARE, "sh", "-c", f'mount -t tmpfs -o size={tmpfs_kb}k tmpfs "$0" && exec "$@"',
               str(home / "runs"), *cmd]
    limit = None if memory_mb is None else memory_mb * 1024**2
    with open(home / "test-worker.log", "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
                                if limit else None)


UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def tmpfs_available() -> bool:
    """Can this machine give a process a private tmpfs (user + mount namespaces)?"""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*UNSHARE, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def stage_reached(store: Store, run_id: int, target: str) -> bool | None:
    """True while the run is at `target`, False once it is past it, None while it has not got there."""
    run = store.get(run_id)
    if run.done or run.stage == "done":
        return False
    if run.stage not in STAGES:
        return None   # still queued
    here, wanted = STAGES.index(run.stage), STAGES.index(target)
    return None if here < wanted else here == wanted


def lost_runs(store: Store, expected: dict[int, set[str]]) -> list[str]:
    """Describe every run of `expected` (id -> acceptable final statuses) not accounted for."""
    lost = []
    for run_id, statuses in expected.items():
        try:
            run = store.get(run_id)
        except Exception as exc:
            lost.append(f"run {run_id}: missing from the store ({exc})")
            continue
        if run.status not in statuses:
            lost.append(f"run {run_id}: {run.status}, expected {'/'.join(sorted(statuses))}: {run.error or ''}"[:300])
        elif run.status == "succeeded" and not (store.run_dir(run_id) / "report.json").is_file():
            lost.append(f"run {run_id}: succeeded without report.json")
    return lost


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wide_onnx(folder: Path, hidden: int = 1024) -> Path:
    """A digits MLP as ONNX (64 -> hidden -> 10), about `hidden` x 300 bytes on disk."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc1.weight"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2.weight"], ["logits"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(rng.normal(size=(hidden, 64)).astype(np.float32) * 0.1, "fc1.weight"),
         numpy_helper.from_array(rng.normal(size=(10, hidden)).astype(np.float32) * 0.1, "fc2.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "wide.onnx"
    onnx.save(model, str(path))
    return path


def memory_hog(folder: Path) -> Path:
    """A valid ONNX model that asks ONNX Runtime for 6.4 GB (ConstantOfShape 40000 x 40000 floats)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"],
                         value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.weight"], ["scores"], transB=1),
        helper.make_node("Add", ["scores", "total"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "hog", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(np.array([40000, 40000], dtype=np.int64), "shape"),
         numpy_helper.from_array(np.full((10, 64), 0.01, dtype=np.float32), "fc.weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "hog.onnx"
    onnx.save(model, str(path))
    return path
