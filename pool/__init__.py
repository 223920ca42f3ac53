"""The model pool: partitions, the seed, and one trained member per base unit."""

# ablate-room: pool (do not remove: ablate checks this line to detect a shadowing package)

from pool.cluster import ClusterModel, add_clustered, fit_clusters
from pool.errors import AblateError, CorruptMemberError, DataError, PoolError
from pool.method import METHODS, Method, method_of
from pool.pool import Pool, UnitRef, VerifyReport
from pool.recipe import LoraSpec, Recipe, TinyModelSpec
from pool.storage import FORMAT_VERSION, MemberRecord, PartitionIndex, PoolManifest

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
    "method_of",
]
