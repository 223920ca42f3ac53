"""``benchmarks/gpu_check.sh`` on a machine without a usable GPU: the CPU-safe part runs,
the rest is skipped with one clear line, and the summary table still prints."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from support import run_captured

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_without_a_gpu_skips_the_gpu_parts_in_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    r = run_captured(["bash", str(SCRIPT)], env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "CUDA device: none" in out
    skips = [line for line in out.splitlines() if "no CUDA device here" in line]
    assert len(skips) == 1 and "bench_kernels.py" in skips[0] and "bench_eval.py" in skips[0]
    table = out[out.index("step ") :]
    assert "gpu-tests" in table and " ok " in table and "skipped" in table
    assert "bench-kernels  skipped" in table and "bench-eval     skipped" in table
