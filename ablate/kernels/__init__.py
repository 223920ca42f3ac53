"""Kernels of the ablate data-ablation simulator: merge models, score them.

* :func:`weighted_average` merges N flattened members into one, with fp32 accumulation.
* :func:`token_nll` fuses LM head, log-softmax and per-token NLL over vocabulary tiles.

Each op runs a Triton kernel on CUDA tensors and a PyTorch twin elsewhere
(``backend="auto" | "triton" | "torch"``, decided per call). Importing this package imports
torch but never triton, and probes no device.
"""

from ._backend import SUPPORTED_DTYPES, triton_available
from .average import weighted_average
from .perplexity import token_nll

__all__ = ["SUPPORTED_DTYPES", "token_nll", "triton_available", "weighted_average"]
