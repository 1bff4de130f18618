"""`Task`: a model family with its data, the unit the train loop is written against.

Kept apart from `pgf.train.tasks` (image classification and the task registry) and `pgf.train.text_tasks`
(T5) so that both import it and neither imports the other's module at import time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

Batch = dict[str, Any]


@dataclasses.dataclass
class Task:
  """A model family with its data.

  Attributes:
    name: "classification" or "seq2seq".
    model: the Flax linen module.
    train_source: object with `train_batch(step) -> dict` (a pure function of (seed, step)).
    eval_source: object with `eval_batches() -> Iterator[dict]` (padded with "valid").
    example_batch: a batch with the shapes of the training batch (for init and validation).
    examples_key: batch key whose leading dimension counts examples (throughput logs).
    loss_fn: (params, batch, rng, train) -> (scalar loss, {metric: scalar}).
    eval_fn: (params, batch) -> {name: per-batch sum}; sums over batches are divided by
      "count", by "tokens" for names starting "token_" or ending "_per_token", and by "<unit>s"
      for a name ending "_per_<unit>" when that sum is returned too (e.g. "bits_per_byte" /
      "bytes"), to give the eval metrics.
    extra_eval: optional (params) -> {name: value} run once per evaluation on the host
      (e.g. greedy-decoding exact match for text classification).
    init_model_state: for models with state besides the params (BatchNorm's running
      statistics): (rng) -> {collection: tree}, e.g. {"batch_stats": ...}. The train loop then
      keeps it in the train state (checkpointed, sharded like the rest), passes it as
      `model_state=` to loss_fn, which returns (loss, (metrics, new model state)), and to
      eval_fn. None: the model is a pure function of its params.
    abstract_params: the params' shapes and dtypes (`jax.eval_shape` of `init_fn`), if the
      builder traced them already; `params_shape()` traces them otherwise, once per task.
  """
  name: str
  model: Any
  train_source: Any
  eval_source: Any
  example_batch: Batch
  examples_key: str
  loss_fn: Callable
  eval_fn: Callable
  init_fn: Callable
  extra_eval: Callable | None = None
  init_model_state: Callable | None = None
  abstract_params: Any = dataclasses.field(default=None, repr=False, compare=False)

  def params_shape(self):
    """The params as `jax.ShapeDtypeStruct`s (they do not depend on the init rng): tracing a
    large model's init takes seconds, and the checks before training and the loop share it."""
    if self.abstract_params is None:
      self.abstract_params = jax.eval_shape(self.init_fn, jax.random.key(0))
    return self.abstract_params

  def eval_batches(self) -> Iterator[Batch]:
    return self.eval_source.eval_batches()


def masked_mean(values, valid):
  """Mean of `values` over the positions where `valid` (padding excluded)."""
  valid = valid.astype(values.dtype)
  return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)
