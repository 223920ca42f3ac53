"""The scoring engine: which members a mixture weighs, the merge, the scorer, the results store.

Everything here works on one pool and one eval set; the ``Evaluator`` composes it.
"""
