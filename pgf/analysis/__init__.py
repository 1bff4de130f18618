"""Analysis tools for pgf runs; import the submodule you need (none is imported here).

  flops     inference FLOPs per example and training FLOPs of a recipe (paper App. D, Fig. 4b)
  noise     gradient-noise statistics: variance of |g| and Adam's ν at kept / pruned positions
  export    compressed N:M kernels (kept values + in-group indices) from params or a checkpoint
  plots     schedule, training-curve, sweep and noise figures (PNG, Agg backend)
  schedule  a recipe's D(j) and N:M patterns over all steps as NumPy arrays
  runs      reading a workdir: metrics.jsonl, config.json, recipe.json, checkpoints
"""
