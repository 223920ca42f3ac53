"""ablate: a data-ablation simulator for language models.

Train one model per data partition (the pool), merge any mixture by parameter averaging,
score the merge's perplexity (Na et al., EMNLP 2024, "Scalable Data Ablation Approximations
for Language Models through Modular Training and Merging"). This face lists the public
names; the rooms behind it, and which may import which, are stated and enforced by
``tests/test_layers.py``.
"""

from ablate.data.evalset import EvalSet
from ablate.data.tasks import Task
from ablate.engine.layout import MemberLayout
from ablate.engine.results import ResultsCache, ResultsStore
from ablate.engine.scoring import DocScores, Scorer, TaskScore, TaskScorer
from ablate.evaluator import (
    DomainScore,
    EvalResult,
    Evaluator,
    EvaluatorConfig,
    LevelShift,
    results_frame,
)
from ablate.laws import MixtureLaw
from ablate.mixture import Mixture, MixtureError
from ablate.pool import AblateError, LoraSpec, Pool, Recipe, TinyModelSpec
from ablate.pool.cluster import add_clustered
from ablate.pool.clusterer import ClusterModel, fit_clusters
from ablate.present.tables import task_frame
from ablate.racing.policy import PartialResult, Race, RaceStats
from ablate.strategies import Study, search
from ablate.validation import ValidationReport, validate
from ablate.version import __version__ as __version__

__all__ = [
    "AblateError",
    "ClusterModel",
    "DocScores",
    "DomainScore",
    "EvalResult",
    "EvalSet",
    "Evaluator",
    "EvaluatorConfig",
    "LevelShift",
    "LoraSpec",
    "MemberLayout",
    "Mixture",
    "MixtureError",
    "MixtureLaw",
    "PartialResult",
    "Pool",
    "Race",
    "RaceStats",
    "Recipe",
    "ResultsCache",
    "ResultsStore",
    "Scorer",
    "Study",
    "Task",
    "TaskScore",
    "TaskScorer",
    "TinyModelSpec",
    "ValidationReport",
    "add_clustered",
    "fit_clusters",
    "results_frame",
    "search",
    "task_frame",
    "validate",
]
