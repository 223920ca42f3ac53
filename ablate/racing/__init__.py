"""Racing: stop scoring mixtures proven worse on part of the eval set (engine and policy)."""
