"""Describe the machine a measurement ran on, so latency numbers can be read (and compared) honestly.

Contract: `environment(threads)` returns a JSON-ready dict with
  cpu_model, logical_cores (os.cpu_count), usable_cores (CPUs this process may run on, or None),
  cpu_flags ({flag: bool} for the SIMD/int8 features in `FLAGS`; every value None where /proc/cpuinfo
  has no x86 flags, e.g. macOS, Windows or ARM), int8_note (one sentence on what int8 kernels can use
  here), versions ({python, numpy, onnx, onnxruntime, torch}: installed versions or None, read from
  package metadata -- nothing is imported), os, platform, machine, threads.
It never raises: anything it cannot read is reported as None / unknown.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile", "f16c")
# distributions that provide `import onnxruntime`
PACKAGES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    "torch": ("torch",),
}


def parse_cpuinfo(text: str) -> tuple[str | None, set[str] | None]:
    """The first 'model name' and the x86 'flags' set from /proc/cpuinfo text (None where absent)."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip() or None
        elif key == "flags" and flags is None:
            flags = set(value.split())
        if model is not None and flags is not None:
            break
    return model, flags


def _read_cpuinfo(path: Path = CPUINFO) -> tuple[str | None, set[str] | None]:
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        return None, None


def int8_note(flags: dict[str, bool | None]) -> str:
    """One sentence on what int8 kernels can use on a CPU with these flags."""
    if flags.get("avx2") is None:
        return "CPU features unknown here: cannot say whether int8 kernels run natively"
    if flags.get("amx_int8"):
        return "AMX-INT8 present: int8 matrix multiplies can use AMX tiles; expect strong int8 speed-ups"
    if flags.get("avx512_vnni") or flags.get("avx_vnni"):
        kind = "AVX-512 VNNI" if flags.get("avx512_vnni") else "AVX-VNNI"
        return f"{kind} present: int8 dot products run natively"
    if flags.get("avx2"):
        return "no VNNI: int8 uses slower AVX2 paths; int8 speed-ups will be modest or absent"
    return "no AVX2: int8 falls back to SSE paths; expect little or no int8 speed-up"


def _version(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not available on macOS / Windows
        return None


def environment(threads: int) -> dict[str, Any]:
    """The machine, its int8-relevant CPU features and the library versions; see the module docstring."""
    model, flag_set = _read_cpuinfo()
    flags: dict[str, bool | None] = {f: (None if flag_set is None else f in flag_set) for f in FLAGS}
    versions: dict[str, str | None] = {"python": platform.python_version()}
    versions.update({key: _version(names) for key, names in PACKAGES.items()})
    return {
        "cpu_model": model or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_flags": flags,
        "int8_note": int8_note(flags),
        "versions": versions,
        "os": platform.system(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "threads": threads,
    }
