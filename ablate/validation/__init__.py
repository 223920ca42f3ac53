"""Validation: really train models on mixtures and measure how well merging predicts them.

Na et al. (EMNLP 2024): the perplexity of a parameter average of per-partition models
correlates with the perplexity of a model trained on the same mixture. ``validate`` checks
that claim on your own pool and eval data, at Na et al.'s proportional budget or at the fixed
budget a mixture optimizer decides at, reports whether the proxies would pick what real
training picks (``decisions``: rank agreement, regret, top-3 recall, noise ceiling), and fits
a calibration map from proxy to real perplexity.
"""

from ablate.validation.decisions import decision_table
from ablate.validation.models import ValidationRecord
from ablate.validation.report import ValidationReport
from ablate.validation.sampling import WeightSampler, sample_mixtures, sample_weighted
from ablate.validation.stats import Calibration
from ablate.validation.validate import validate

__all__ = [
    "Calibration",
    "ValidationRecord",
    "ValidationReport",
    "WeightSampler",
    "decision_table",
    "sample_mixtures",
    "sample_weighted",
    "validate",
]
