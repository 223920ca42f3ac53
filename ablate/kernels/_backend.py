"""Per-call choice between a Triton kernel and its PyTorch reference twin.

Every public op in :mod:`kernels` takes ``backend="auto" | "triton" | "torch"``. This module
turns that choice into a decision for one call, from the device of the tensors at hand:
nothing global is switched at import and no device is probed until an op runs.

Triton is an optional dependency (the ``triton`` extra). Whether it is installed is found
once with :func:`importlib.util.find_spec`, without importing it, so ``import kernels``
stays cheap on machines that will never launch a kernel.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

Backend = Literal["auto", "triton", "torch"]

# The floating-point dtypes every op and both of its implementations accept, the Triton
# launchers included: one tuple, so a kernel and its twin can never disagree.
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_BACKENDS = ("auto", "triton", "torch")


@functools.cache
def triton_available() -> bool:
    """Whether the ``triton`` package is installed (found, not imported; cached).

    Returns:
        True when ``import triton`` would find a package.
    """
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (env ``TRITON_INTERPRET=1``).

    Read per call, not cached: tests set the variable before their first launch.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, op: str) -> Literal["triton", "torch"]:
    """Decide which implementation runs one call of ``op``.

    Args:
        backend: ``"auto"`` (Triton for CUDA tensors when installed, else the twin),
            ``"triton"`` (force the kernel) or ``"torch"`` (force the twin).
        device: Device of the op's main tensor.
        op: Name of the public op, used in error messages.

    Returns:
        ``"triton"`` or ``"torch"``.

    Raises:
        ValueError: ``backend`` is not one of the three names.
        ImportError: ``backend="triton"`` but triton is not installed.
        RuntimeError: ``backend="triton"`` on a non-CUDA tensor without ``TRITON_INTERPRET=1``.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"{op}: backend must be one of {_BACKENDS}, got {backend!r}; "
            "use 'auto' unless you are testing one implementation"
        )
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available():
        raise ImportError(
            f"{op}: backend='triton' needs the triton package, which is not installed; "
            "install the extra with `pip install 'ablate-sim[triton]'` or pass backend='torch'"
        )
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{op}: backend='triton' got tensors on {device.type!r}; Triton kernels run on "
            "CUDA tensors, or on CPU tensors only under the interpreter (set the environment "
            "variable TRITON_INTERPRET=1 before triton is first imported), or pass backend='torch'"
        )
    return "triton"
