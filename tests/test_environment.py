"""environment: keys, CPU flags read from /proc/cpuinfo on Linux, versions without importing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from workbench.environment import FLAGS, environment, int8_note, parse_cpuinfo


def test_environment_keys_and_types() -> None:
    env = environment(threads=3)
    assert {"cpu_model", "logical_cores", "usable_cores", "cpu_flags", "int8_note", "versions", "os",
            "platform", "machine", "threads"} <= set(env)
    assert env["threads"] == 3 and env["logical_cores"] >= 1
    assert set(env["cpu_flags"]) == set(FLAGS)
    assert set(env["versions"]) == {"python", "numpy", "onnx", "onnxruntime", "torch"}
    assert env["versions"]["numpy"] and env["versions"]["onnxruntime"]
    assert isinstance(env["int8_note"], str) and env["int8_note"]
    json.dumps(env)


@pytest.mark.skipif(not sys.platform.startswith("linux") or "flags" not in Path("/proc/cpuinfo").read_text(),
                    reason="needs x86 Linux /proc/cpuinfo")
def test_flags_are_bools_on_linux() -> None:
    env = environment(threads=1)
    assert all(isinstance(v, bool) for v in env["cpu_flags"].values())
    assert env["cpu_model"]


def test_parse_cpuinfo_and_notes() -> None:
    text = "processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: sse avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n"
    model, flags = parse_cpuinfo(text)
    assert model == "Fake CPU" and {"avx2", "avx512_vnni"} <= flags
    assert parse_cpuinfo("Features\t: fp asimd\n") == (None, None)
    assert "AVX-512 VNNI" in int8_note({"avx2": True, "avx512_vnni": True})
    assert "no VNNI" in int8_note({"avx2": True, "avx512_vnni": False, "avx_vnni": False})
    assert "unknown" in int8_note(dict.fromkeys(FLAGS))
