"""Tasks: what the train loop needs to know about a model family and its data.

A task builds the model and its data sources from the config and defines the loss and the
evaluation metrics. The train loop (pgf/train.py) is shared by every task; models and data know
nothing about sparsity (the loop applies `pgf.sparsify` to the params before `apply`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

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

  def eval_batches(self) -> Iterator[Batch]:
    return self.eval_source.eval_batches()


def _masked_mean(values, valid):
  valid = valid.astype(values.dtype)
  return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


# --------------------------------------------------------------------------- classification
def vit_model(config, num_classes: int):
  """The ViT of `config.model` (no data needed: also for abstract params, e.g. size reports)."""
  from pgf.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  variant = vit_lib.decode_variant(config.model.variant)
  return vit_lib.ViT(
      num_classes=num_classes,
      pool_type=config.model.pool_type,
      dropout=config.model.dropout,
      attention_dropout=config.model.get("attention_dropout", 0.0),
      drop_path=config.model.drop_path,
      dtype=jnp.dtype(config.model.get("dtype", "float32")),
      **{k: config.model.get(k, v) for k, v in variant.items()})


def classification_task(config, process_index: int = 0, process_count: int = 1) -> Task:
  """ViT image classification on digits (embedded), cifar10 or imagenet2012 (TFDS)."""
  train_source, eval_source = build_image_sources(config, process_index, process_count)
  model = vit_model(config, train_source.num_classes)
  size = train_source.image_size
  channels = getattr(train_source, "channels", 3)
  example = {"image": np.zeros((1, size, size, channels), np.float32),
             "label": np.zeros((1,), np.int32), "valid": np.ones((1,), bool)}
  smoothing = config.get("label_smoothing", 0.0)

  def init_fn(rng):
    return model.init({"params": rng}, example["image"], train=False)["params"]

  def loss_fn(params, batch, rng, train):
    logits = model.apply({"params": params}, batch["image"], train=train,
                         rngs={"dropout": rng} if train else None)
    labels = jax.nn.one_hot(batch["label"], logits.shape[-1])
    if smoothing:
      labels = optax.smooth_labels(labels, smoothing)
    losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)
    valid = batch["valid"]
    correct = jnp.argmax(logits, -1) == batch["label"]
    return _masked_mean(losses, valid), {"accuracy": _masked_mean(correct.astype(jnp.float32),
                                                                    valid)}

  def eval_fn(params, batch):
    logits = model.apply({"params": params}, batch["image"], train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             batch["label"])
    valid = batch["valid"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss": jnp.sum(losses * valid), "accuracy": jnp.sum(correct * valid),
            "count": jnp.sum(valid)}

  return Task("classification", model, train_source, eval_source, example, "image", loss_fn,
              eval_fn, init_fn)


def build_image_sources(config, process_index: int, process_count: int):
  """(train source, eval source) for config.data.name."""
  data = config.data
  batch = config.batch_size
  eval_batch = config.get("eval_batch_size", batch)
  if data.name == "digits":
    from pgf.data.digits import DigitsSource  # pylint: disable=g-import-not-at-top
    source = DigitsSource(batch, config.seed, image_size=data.image_size,
                          process_index=process_index, process_count=process_count,
                          eval_global_batch_size=eval_batch)
    return source, source
  from pgf.data.images import train_and_eval_sources  # pylint: disable=g-import-not-at-top
  return train_and_eval_sources(
      data.name, data.get("data_dir") or None, batch, config.seed, data.image_size,
      process_index, process_count, train_split=data.get("train_split", "train"),
      eval_split=data.get("eval_split") or None, eval_global_batch_size=eval_batch)


def num_train_examples(task: Task) -> int:
  return int(task.train_source.num_train)


def build_task(config, process_index: int = 0, process_count: int = 1) -> Task:
  if config.model.name == "vit":
    return classification_task(config, process_index, process_count)
  if config.model.name == "t5":
    from pgf import text_tasks  # pylint: disable=g-import-not-at-top
    return text_tasks.seq2seq_task(config, process_index, process_count)
  raise ValueError(f"config.model.name={config.model.name!r}: expected 'vit' or 't5'")
