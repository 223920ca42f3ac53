"""The scoring engine: which members a mixture weighs (``layout``), the merged model and its
merge methods (``merge``, ``merges``), the scorers (``scoring``, ``scores``), the results
store (``results``) and where a batch of mixtures runs (``executor``, ``ray``).

Everything here works on one pool; the ``Evaluator`` composes it.
"""
