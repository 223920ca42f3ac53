"""Shared setup for the kernel tests: Triton's CPU interpreter and seeding.

Without a GPU, Triton kernels run on CPU tensors in the interpreter, which Triton reads
from ``TRITON_INTERPRET`` when a kernel is defined: set it here, before any test imports
``kernels.triton_*``. With a GPU the real kernels run on CUDA tensors instead.
"""

from __future__ import annotations

import os

import pytest
import torch

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
