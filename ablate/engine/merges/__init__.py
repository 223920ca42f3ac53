"""Merge methods as plug-ins: one file each, registered by name in ``MERGES`` when imported here."""

from ablate.engine.merges.average import Average
from ablate.engine.merges.base import (
    DAMPING,
    MERGES,
    PER_TENSOR,
    POOL_MERGES,
    PRECISIONS,
    Mergeable,
    MergeMethod,
    PoolMerge,
    Precision,
    merge_method,
    register,
)
from ablate.engine.merges.extrapolate import Extrapolate, NormExtrapolate, norm_lambda
from ablate.engine.merges.fisher import Fisher, FisherDamped, FisherPerTensor
from ablate.engine.merges.regmean import RegMean

__all__ = [
    "DAMPING",
    "MERGES",
    "PER_TENSOR",
    "POOL_MERGES",
    "PRECISIONS",
    "Average",
    "Extrapolate",
    "Fisher",
    "FisherDamped",
    "FisherPerTensor",
    "MergeMethod",
    "Mergeable",
    "NormExtrapolate",
    "PoolMerge",
    "Precision",
    "RegMean",
    "merge_method",
    "norm_lambda",
    "register",
]
