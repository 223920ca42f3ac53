"""ablate: a data-ablation simulator for language models.

Train one model per data partition (the pool), merge any mixture by parameter averaging,
score the merge's perplexity (Na et al., EMNLP 2024, "Scalable Data Ablation Approximations
for Language Models through Modular Training and Merging").
"""

from ablate._rooms import check_rooms

check_rooms()

from ablate.distributed import RayEvaluator  # noqa: E402  (imports Ray only when used)
from ablate.evalset import EvalSet  # noqa: E402
from ablate.evaluator import DomainScore, EvalResult, Evaluator, results_frame  # noqa: E402
from ablate.mixture import Mixture, MixtureError  # noqa: E402
from ablate.search import Study, search  # noqa: E402  (shadows the subpackage name: use `from ablate.search import ...`)
from ablate.validation import ValidationReport, validate  # noqa: E402
from pool import AblateError, LoraSpec, Pool, Recipe, TinyModelSpec  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AblateError",
    "DomainScore",
    "EvalResult",
    "EvalSet",
    "Evaluator",
    "LoraSpec",
    "Mixture",
    "MixtureError",
    "Pool",
    "RayEvaluator",
    "Recipe",
    "Study",
    "TinyModelSpec",
    "ValidationReport",
    "results_frame",
    "search",
    "validate",
]
