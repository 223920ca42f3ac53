"""The model pool: partitions, the seed, and one trained member per base unit."""

from ablate.pool.cluster import add_clustered
from ablate.pool.clusterer import ClusterModel, fit_clusters
from ablate.pool.distributed import grow_with_ray, torchrun_group
from ablate.pool.errors import AblateError, CorruptMemberError, DataError, PoolError
from ablate.pool.method import METHODS, Method, method_of
from ablate.pool.pool import Pool, UnitRef, VerifyReport
from ablate.pool.recipe import LoraSpec, Recipe, TinyModelSpec
from ablate.pool.storage import FORMAT_VERSION, MemberRecord, PartitionIndex, PoolManifest

__all__ = [
    "FORMAT_VERSION",
    "METHODS",
    "AblateError",
    "ClusterModel",
    "CorruptMemberError",
    "DataError",
    "LoraSpec",
    "MemberRecord",
    "Method",
    "PartitionIndex",
    "Pool",
    "PoolError",
    "PoolManifest",
    "Recipe",
    "TinyModelSpec",
    "UnitRef",
    "VerifyReport",
    "add_clustered",
    "fit_clusters",
    "grow_with_ray",
    "method_of",
    "torchrun_group",
]
