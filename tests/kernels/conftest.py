"""Shared setup for the kernel tests: Triton's CPU interpreter and seeding.

Without a GPU, Triton kernels run on CPU tensors in the interpreter, which Triton reads
from ``TRITON_INTERPRET`` when a kernel is defined: set it here, before any test imports
``kernels.triton_*``. With a GPU the real kernels run on CUDA tensors instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from support import AOT_CAPABILITIES, run_captured

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _one_thread():
    """Test tensors are tiny: one thread avoids OpenMP barriers, which stall for whole
    scheduler slices when a shared CI machine is oversubscribed (seen: 1 s per test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device() -> torch.device:
    """Where Triton tests put their tensors: CUDA if present, else CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def aot_ptx(tmp_path_factory):
    """``aot_ptx(kernel, dtype, capability)``: the PTX the real Triton compiler emits.

    Compiled in a child process without ``TRITON_INTERPRET``, which would otherwise swap
    the compiler for the interpreter in this process (``aot_compile.py`` says more); each
    kernel is compiled once per session for every dtype and capability. Fails the calling
    test with the compiler's message when it rejects the kernel.
    """
    pytest.importorskip("triton")
    script = Path(__file__).with_name("aot_compile.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    outputs: dict[str, Path] = {}

    def compile_ptx(kernel: str, dtype: str, capability: int) -> str:
        if kernel not in outputs:
            out = tmp_path_factory.mktemp(f"aot-{kernel}")
            caps = [str(c) for c in AOT_CAPABILITIES]
            run = run_captured([sys.executable, str(script), kernel, str(out), *caps], env=env)
            assert run.returncode == 0, f"aot_compile.py failed:\n{run.stderr}"
            outputs[kernel] = out
        stem = outputs[kernel] / f"{dtype}-sm{capability}"
        error = stem.with_suffix(".err")
        if error.exists():
            pytest.fail(
                f"{kernel} does not compile for {dtype} on sm_{capability}: {error.read_text()}"
            )
        return stem.with_suffix(".ptx").read_text()

    return compile_ptx
