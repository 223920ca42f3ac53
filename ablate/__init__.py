"""ablate: a data-ablation simulator for language models.

Train one model per data partition (the pool), merge any mixture by parameter averaging,
score the merge's perplexity (Na et al., EMNLP 2024, "Scalable Data Ablation Approximations
for Language Models through Modular Training and Merging").

The layers, bottom up (each one importable and usable on its own):

* ``pool`` - partitions, the seed model and one trained member per partition unit; a
  ``Method`` (full, LoRA) owns what a member stores and how it merges.
* ``MemberLayout`` - which stack rows a mixture weighs, its cache key, Gray-code order.
* ``MergedModel`` (``ablate.engine.merge``) - the ``[N, P]`` member stack and one model skeleton;
  a merge is one ``kernels.weighted_average``; running-sum walks over subsets.
* ``Scorer(model, eval_set)`` - windows and batches of one eval set, NLL per domain or per
  document through ``kernels.token_nll``.
* ``ResultsCache`` / ``ResultsStore`` - no mixture is scored twice.
* an executor - scores a batch of mixtures here or on Ray actors (``executor="ray"``).
* ``Race`` (``ablate.racing.policy``) - a scoring policy: mixtures proven worse on part of the
  eval set stop early, survivors are scored in full.
* ``Evaluator`` - the composition users call (``evaluate``, ``run_many``, ...); ``search``
  and ``validate`` read scores only through it.
"""

from ablate.data.evalset import EvalSet
from ablate.data.tasks import Task
from ablate.engine.layout import MemberLayout
from ablate.engine.results import ResultsCache, ResultsStore
from ablate.engine.scoring import DocScores, Scorer, TaskScore, TaskScorer
from ablate.evaluator import DomainScore, EvalResult, Evaluator, results_frame
from ablate.mixture import Mixture, MixtureError
from ablate.pool import AblateError, LoraSpec, Pool, Recipe, TinyModelSpec
from ablate.pool.cluster import ClusterModel, add_clustered, fit_clusters
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
    "LoraSpec",
    "MemberLayout",
    "Mixture",
    "MixtureError",
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
